"""ONNX to ``torch.nn.Module``: onnx2torch, plus our own converters and graph rewrites it lacks.

onnx2torch 1.5 covers 108 ONNX op types (about the opset-13 set, LayerNormalization 17 included);
``CUSTOM_CONVERTERS`` adds what models exported at opset 18-20 use (Gelu, Reduce* with axes as
an input, Mish, CastLike, GlobalMaxPool). Before conversion Conv+BatchNormalization pairs are
folded (one convolution instead of two kernels), and for FP16/BF16 sessions Cast-to-float nodes
are retargeted so converted weights and activations stay in one dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from onnx2torch import convert as _onnx2torch_convert
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)
from torch import fx, nn

from crossinfer.backends.batchnorm_folding import fold_batch_norms
from crossinfer.backends.normalize import normalize
from crossinfer.errors import UnsupportedNodeError
from crossinfer.onnx_graph import same_signature

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Conversion:
    """A converted module and what was done to the graph on the way."""

    module: fx.GraphModule
    folded_batchnorms: int
    retargeted_casts: int
    fused_conv_relu: int  # Conv->ReLU and Conv->Add->ReLU chains made one cuDNN call
    static_reshapes: int  # Reshapes and Gathers rewritten so they never read device values
    custom_ops: tuple[str, ...]  # op types converted by crossinfer's own converters
    fused_attention: int = 0  # MatMul->scale->[mask]->Softmax->MatMul chains made one SDPA call
    fused_linear: int = 0  # MatMul by a constant, then Add of a constant bias: one linear call


# --- our own converters -------------------------------------------------------------------


class _Gelu(nn.Module):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate=self.approximate)


class _Reduce(nn.Module):
    """Reduce* from opset 18, where the axes arrive as a (constant) input, not an attribute."""

    def __init__(self, kind: str, axes: tuple[int, ...] | None, keepdims: bool) -> None:
        super().__init__()
        self.kind = kind
        self.axes = axes
        self.keepdims = keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(self.axes) if self.axes is not None else list(range(x.dim()))
        keep = self.keepdims
        if self.kind == "ReduceMean":
            return torch.mean(x, dim=dims, keepdim=keep)
        if self.kind == "ReduceMax":
            return torch.amax(x, dim=dims, keepdim=keep)
        if self.kind == "ReduceMin":
            return torch.amin(x, dim=dims, keepdim=keep)
        if self.kind == "ReduceProd":
            out = x
            for dim in sorted(dims, reverse=True):
                out = torch.prod(out, dim=dim, keepdim=keep)
            return out
        if self.kind == "ReduceSumSquare":
            return torch.sum(x * x, dim=dims, keepdim=keep)
        if self.kind == "ReduceL2":
            return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep))
        if self.kind == "ReduceL1":
            return torch.sum(torch.abs(x), dim=dims, keepdim=keep)
        return torch.logsumexp(x, dim=dims, keepdim=keep)  # ReduceLogSumExp


class _CastLike(nn.Module):
    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)


class _Flatten(nn.Module):
    """ONNX Flatten: always 2-D, (prod(dims[:axis]), prod(dims[axis:])). onnx2torch 1.5's
    flattens twice and fails when axis equals the rank (DistilBERT's mask, axis 2 of a 2-D)."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        lead = 1
        for size in x.shape[:axis]:
            lead *= size
        rest = 1
        for size in x.shape[axis:]:
            rest *= size
        return x.reshape(lead, rest)


class _CumSum(nn.Module):
    """ONNX CumSum. onnx2torch 1.5's reverses by default (ONNX's default is reverse=0), and
    torch.cumsum widens int32 to int64; the axis is read when converting where it is constant."""

    def __init__(self, *, axis: int | None, exclusive: bool, reverse: bool) -> None:
        super().__init__()
        self.axis = axis
        self.exclusive = exclusive
        self.reverse = reverse

    def forward(self, x: torch.Tensor, axis: torch.Tensor | None = None) -> torch.Tensor:
        dim = self.axis if self.axis is not None else int(axis)  # type: ignore[arg-type]
        y = torch.flip(x, dims=(dim,)) if self.reverse else x
        out = torch.cumsum(y, dim=dim)
        if self.exclusive:
            out = out - y
        if self.reverse:
            out = torch.flip(out, dims=(dim,))
        return out.to(x.dtype)


class _GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


def _result(
    module: nn.Module, node: OnnxNode, inputs: int | None = None
) -> OperationConverterResult:
    mapping = onnx_mapping_from_node(node)
    if inputs is not None:
        mapping = mapping._replace(inputs=mapping.inputs[:inputs])
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


def _convert_gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _result(_Gelu(str(node.attributes.get("approximate", "none"))), node)


def _convert_reduce(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    axes: tuple[int, ...] | None = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            value = get_const_value(node.input_values[1], graph)
        except KeyError as exc:
            raise NotImplementedError(
                f"{node.operation_type} '{node.name}' takes its axes from a computed tensor; "
                "only constant axes can be converted"
            ) from exc
        axes = tuple(int(a) for a in torch.as_tensor(value).flatten().tolist())
    if axes == () and node.attributes.get("noop_with_empty_axes", 0):
        return _result(nn.Identity(), node, inputs=1)
    module = _Reduce(node.operation_type, axes or None, bool(node.attributes.get("keepdims", 1)))
    return _result(module, node, inputs=1)


def _convert_mish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _result(nn.Mish(), node)


def _convert_cast_like(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _result(_CastLike(), node)


def _convert_flatten(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _result(_Flatten(int(node.attributes.get("axis", 1))), node)


def _convert_cumsum(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    try:
        axis: int | None = int(torch.as_tensor(get_const_value(node.input_values[1], graph)))
    except KeyError:  # a computed axis: read when running
        axis = None
    module = _CumSum(
        axis=axis,
        exclusive=bool(node.attributes.get("exclusive", 0)),
        reverse=bool(node.attributes.get("reverse", 0)),
    )
    return _result(module, node, inputs=1 if axis is not None else None)


def _convert_average_pool_19(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    # AveragePool 19 added dilations (22 only types): without them it is version 11's op
    if any(int(d) != 1 for d in node.attributes.get("dilations", [])):
        raise NotImplementedError("AveragePool with dilations is not converted")
    return get_converter(operation_type="AveragePool", version=11)(node, graph)


class _Size(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def _convert_size(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _result(_Size(), node)


def _convert_cast_19(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    # Cast 19+ added `saturate` (and 25 `round_mode`), which only float8/float4 targets read;
    # onnx2torch's Cast 13 converts every other target and refuses those types by name
    return get_converter(operation_type="Cast", version=13)(node, graph)


def _convert_global_max_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _result(_GlobalMaxPool(), node)


_Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]
_REDUCE_18 = (
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
)
# (op type, since-version) -> converter; the versions are the ONNX schema's since_version
CUSTOM_CONVERTERS: dict[tuple[str, int], _Converter] = {
    ("Gelu", 20): _convert_gelu,
    ("Mish", 18): _convert_mish,
    ("CastLike", 15): _convert_cast_like,
    ("CastLike", 19): _convert_cast_like,
    **{("CastLike", v): _convert_cast_like for v in (21, 23, 24, 25)},
    **{("Cast", v): _convert_cast_19 for v in (19, 21, 23, 24, 25, 28)},
    ("Size", 1): _convert_size,
    ("Size", 13): _convert_size,
    ("Size", 19): _convert_size,
    ("Size", 21): _convert_size,
    ("Size", 23): _convert_size,
    ("Size", 24): _convert_size,
    ("Size", 25): _convert_size,
    ("GlobalMaxPool", 1): _convert_global_max_pool,
    ("AveragePool", 19): _convert_average_pool_19,
    ("AveragePool", 22): _convert_average_pool_19,
    **{(op, 18): _convert_reduce for op in _REDUCE_18},
    ("ReduceMax", 20): _convert_reduce,
    ("ReduceMin", 20): _convert_reduce,
}


# op type -> our converter, for every version: onnx2torch's gives wrong results or fails
REPLACED_CONVERTERS: dict[str, _Converter] = {
    "CumSum": _convert_cumsum,
    "Flatten": _convert_flatten,
}


def _register_custom_converters() -> tuple[tuple[str, int], ...]:
    """Add ours where onnx2torch has none; a later onnx2torch that has one keeps its own."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    added = []
    for op, converter in REPLACED_CONVERTERS.items():
        for schema in onnx.defs.get_all_schemas_with_history():
            if schema.name == op and schema.domain == "":
                description = OperationDescription("", op, schema.since_version)
                _CONVERTER_REGISTRY[description] = converter  # add_converter refuses to replace
                added.append((op, schema.since_version))
    for (op, version), converter in CUSTOM_CONVERTERS.items():
        if _has_converter(op, version, ""):
            continue
        add_converter(operation_type=op, version=version)(converter)
        added.append((op, version))
    return tuple(added)


def _register_same_signature_versions() -> dict[tuple[str, int], int]:
    """Newer versions of an op whose schema differs from a converted one only in element types.

    Opsets 16-24 re-released many ops to admit bfloat16, float8 or int4 (GreaterOrEqual 16,
    HardSwish 22, ...): same attributes, inputs and outputs, same meaning. onnx2torch's
    converter for the older version converts them; a dtype torch lacks fails at run time with
    torch's message. Returns (op, newer version) -> the version whose converter it uses.
    """
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    since_versions: dict[str, list[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain == "":
            since_versions.setdefault(schema.name, []).append(schema.since_version)
    aliases: dict[tuple[str, int], int] = {}
    for description in sorted(_CONVERTER_REGISTRY, key=lambda d: -d.version):
        op, version = description.operation_type, description.version
        if description.domain != "":
            continue
        for newer in sorted(v for v in since_versions.get(op, []) if v > version):
            if _has_converter(op, newer, "") or not same_signature(op, newer, version):
                continue
            add_converter(operation_type=op, version=newer)(
                get_converter(operation_type=op, version=version)
            )
            aliases[(op, newer)] = version
    return aliases


def _has_converter(op: str, version: int, domain: str) -> bool:
    try:
        get_converter(operation_type=op, version=version, domain=domain)
    except NotImplementedError:
        return False
    return True


_REGISTERED = _register_custom_converters()
SAME_SIGNATURE_VERSIONS = _register_same_signature_versions()


# --- coverage ----------------------------------------------------------------------------


def op_name(op_type: str, domain: str) -> str:
    """How crossinfer writes an op everywhere: ``Relu``, or ``com.example:Relu`` off the default domain."""
    return op_type if domain in _DEFAULT_DOMAINS else f"{domain}:{op_type}"


def unsupported_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    """Op types of the model that neither onnx2torch nor our converters can turn into torch."""
    opsets = {op.domain: op.version for op in model.opset_import}
    missing: set[str] = set()
    for node in model.graph.node:
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        version = opsets.get(node.domain, opsets.get(domain, 0))
        if not _has_converter(node.op_type, version, domain):
            missing.add(op_name(node.op_type, node.domain))
    return tuple(sorted(missing))


def custom_ops_used(model: onnx.ModelProto) -> tuple[str, ...]:
    opsets = {op.domain: op.version for op in model.opset_import}
    version = opsets.get("", opsets.get("ai.onnx", 0))
    used = set()
    for node in model.graph.node:
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        since = _since_version(node.op_type, version)
        if (node.op_type, since) in _REGISTERED:
            used.add(node.op_type)
    return tuple(sorted(used))


def _since_version(op_type: str, version: int) -> int:
    try:
        return int(onnx.defs.get_schema(op_type, max_inclusive_version=version).since_version)
    except onnx.defs.SchemaError:
        return version


# --- graph rewrites before conversion ----------------------------------------------------------


def retarget_float_casts(module: nn.Module, dtype: torch.dtype) -> int:
    """Casts to FP32 in the converted module cast to `dtype` instead: weights then meet one dtype.

    Without it a mask cast to float32 would promote attention scores back to FP32 and the next
    MatMul would see FP16 and FP32 operands. (onnx2torch's Cast knows no BF16, so this is done
    on the module, not on the ONNX graph.)
    """
    count = 0
    for sub in module.modules():
        if type(sub).__name__ == "OnnxCast" and getattr(sub, "torch_dtype", None) == torch.float32:
            setattr(sub, "torch_dtype", dtype)  # noqa: B010 (an attribute of onnx2torch's OnnxCast)
            count += 1
    return count


class StaticReshape(nn.Module):
    """Reshape to a shape known when converting (ONNX's 0 copies the input's dim there)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)])


def static_reshapes(module: fx.GraphModule) -> int:
    """Reshapes whose target shape is a constant get that shape as Python ints.

    onnx2torch reads the shape tensor at run time; on a GPU every read is a device-to-host
    copy that stalls the stream and makes CUDA graph capture fail.
    """
    graph = module.graph
    count = 0
    for node in list(graph.nodes):
        reshape = _module_of(module, node)
        if type(reshape).__name__ != "OnnxReshape" or len(node.args) != 2:
            continue
        shape = _constant(module, node.args[1])
        if shape is None or shape.dtype not in (torch.int64, torch.int32) or shape.dim() != 1:
            continue
        name = _fresh(dict(module.named_children()), f"{node.target}_static")
        module.add_submodule(name, StaticReshape(tuple(int(d) for d in shape.tolist())))
        with graph.inserting_before(node):
            new = graph.call_module(name, args=node.args[:1])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    if count:
        _rewritten(module, dead_code=True)
    return count


class Gather(nn.Module):
    """ONNX Gather as index_select: onnx2torch indexes with the tensor, and a 0-d index tensor
    is read back to the host as a Python int (a stall, and a failed CUDA graph capture)."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        axis = self.axis % x.dim()
        size = x.shape[axis]
        flat = indices.reshape(-1).to(torch.int64)
        flat = torch.where(flat < 0, flat + size, flat)
        picked = torch.index_select(x, axis, flat)
        # one tuple, not unpacked arguments: a 0-d result (Gather(Shape(x), scalar), in every
        # exported transformer) has an empty shape, and reshape() with no arguments is an error
        return picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :]))


def gathers_without_host_reads(module: fx.GraphModule) -> int:
    """Every onnx2torch Gather becomes a `Gather` (index_select); returns how many."""
    count = 0
    for node in module.graph.nodes:
        old = _module_of(module, node)
        if type(old).__name__ != "OnnxGather":
            continue
        name = _fresh(dict(module.named_children()), f"{node.target}_index_select")
        module.add_submodule(name, Gather(int(getattr(old, "_axis", 0))))
        node.target = name
        count += 1
    if count:
        module.recompile()
        module.delete_all_unused_submodules()
    return count


def _constant(module: fx.GraphModule, arg: object) -> torch.Tensor | None:
    if not isinstance(arg, fx.Node) or not isinstance(arg.target, str):
        return None
    value: Any = None
    if arg.op == "get_attr":
        value = module
        for part in arg.target.split("."):
            value = getattr(value, part, None)
    elif type(_module_of(module, arg)).__name__ == "OnnxConstant":
        value = getattr(_module_of(module, arg), "value", None)
    return value if isinstance(value, torch.Tensor) else None


class ConvReLU(nn.Module):
    """Conv2d then ReLU as one cuDNN call on CUDA (bias and activation in the convolution's epilogue)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.is_cuda:
            return torch.cudnn_convolution_relu(
                x, c.weight, c.bias, c.stride, _padding(c), c.dilation, c.groups
            )
        return torch.relu(c(x))


class ConvAddReLU(nn.Module):
    """relu(conv(x) + z), a residual block's tail, as one cuDNN call on CUDA."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.is_cuda and z.dim() == 4 and z.dtype == x.dtype:
            return torch.cudnn_convolution_add_relu(
                x, c.weight, z, 1.0, c.bias, c.stride, _padding(c), c.dilation, c.groups
            )
        return torch.relu(c(x) + z)


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    # _fusable_conv admits only numeric padding ("same"/"valid" strings stay unfused)
    assert not isinstance(conv.padding, str)
    return tuple(conv.padding)


def fuse_conv_relu_chains(module: fx.GraphModule) -> int:
    """Rewrite Conv2d->ReLU and Conv2d->Add->ReLU chains into ConvReLU / ConvAddReLU modules.

    Only where each intermediate value has that one user, so nothing else needs it in memory.
    Returns how many chains were fused.
    """
    graph = module.graph
    fused = 0
    for node in list(graph.nodes):
        conv = _module_of(module, node)
        if not _fusable_conv(conv) or len(node.users) != 1:
            continue
        (user,) = node.users
        if isinstance(_module_of(module, user), nn.ReLU):
            name = _fresh(dict(module.named_children()), f"{node.target}_relu_fused")
            module.add_submodule(name, ConvReLU(conv))  # type: ignore[arg-type]
            with graph.inserting_before(node):
                new = graph.call_module(name, args=node.args[:1])
            user.replace_all_uses_with(new)
            graph.erase_node(user)
            graph.erase_node(node)
            fused += 1
            continue
        if _binary_op(module, user) is not torch.add or len(user.users) != 1:
            continue
        (relu,) = user.users
        if not isinstance(_module_of(module, relu), nn.ReLU):
            continue
        other = user.args[1] if user.args[0] is node else user.args[0]
        name = _fresh(dict(module.named_children()), f"{node.target}_add_relu_fused")
        module.add_submodule(name, ConvAddReLU(conv))  # type: ignore[arg-type]
        with graph.inserting_before(relu):
            new = graph.call_module(name, args=(node.args[0], other))
        relu.replace_all_uses_with(new)
        graph.erase_node(relu)
        graph.erase_node(user)
        graph.erase_node(node)
        fused += 1
    if fused:
        _rewritten(module, dead_code=False)
    return fused


class Attention(nn.Module):
    """softmax(q @ k_t * scale + mask) @ v as one `scaled_dot_product_attention` call.

    `k_t` is the keys already transposed, as the matched graph had them. Where the inputs are
    not 4-d (heads, sequence, head size under a batch) it computes the graph's own expression.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(
        self, q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        fits = mask is None or (mask.dim() <= 4 and mask.is_floating_point())
        if fits and q.dim() == k_t.dim() == v.dim() == 4 and q.dtype == k_t.dtype == v.dtype:
            if mask is not None:
                mask = mask.to(q.dtype)
            return nn.functional.scaled_dot_product_attention(
                q, k_t.transpose(-2, -1), v, attn_mask=mask, scale=self.scale
            )
        scores = torch.matmul(q, k_t) * self.scale
        if mask is not None:
            scores = scores + mask
        return torch.matmul(torch.softmax(scores, dim=-1), v)


def fuse_attention_chains(module: fx.GraphModule) -> int:
    """Rewrite MatMul(q, k_t) -> Div/Mul by a constant -> [Add mask] -> Softmax(last axis) ->
    MatMul(., v) into `Attention` (one fused attention kernel on CUDA: flash / memory-efficient
    / cuDNN, where the unfused chain writes the [batch, heads, seq, seq] scores to memory three
    times). Only where each intermediate value has that one user. Returns how many were fused.
    """
    graph = module.graph
    fused = 0
    for node in list(graph.nodes):
        if type(_module_of(module, node)).__name__ != "OnnxMatMul" or len(node.args) != 2:
            continue
        chain = _attention_chain(module, node)
        if chain is None:
            continue
        scale, mask, softmax, out = chain
        q, k_t = node.args
        v = out.args[1]
        name = _fresh(dict(module.named_children()), f"{node.target}_attention")
        module.add_submodule(name, Attention(scale))
        args = (q, k_t, v) if mask is None else (q, k_t, v, mask)
        with graph.inserting_before(out):
            new = graph.call_module(name, args=args)
        out.replace_all_uses_with(new)
        for dead in (out, softmax, *_between(node, softmax), node):
            graph.erase_node(dead)
        fused += 1
    if fused:
        _rewritten(module, dead_code=False)
    return fused


def _between(first: fx.Node, last: fx.Node) -> list[fx.Node]:
    """The nodes strictly between `first` and `last` along a single-user chain, last first."""
    chain = []
    node = next(iter(first.users))
    while node is not last:
        chain.append(node)
        node = next(iter(node.users))
    return chain[::-1]


def _attention_chain(
    module: fx.GraphModule, scores: fx.Node
) -> tuple[float, fx.Node | None, fx.Node, fx.Node] | None:
    """(scale, mask, softmax node, output MatMul) when `scores` starts the attention chain."""

    def only_user(node: fx.Node) -> fx.Node | None:
        return next(iter(node.users)) if len(node.users) == 1 else None

    step = only_user(scores)
    function = _binary_op(module, step)
    if step is None or function is None or step.args[0] is not scores:
        return None
    constant = _constant(module, step.args[1])
    if constant is None or constant.numel() != 1 or not constant.is_floating_point():
        return None
    value = float(constant.reshape(()))
    if function is torch.mul:
        scale = value
    elif getattr(function, "__name__", "") in ("_onnx_div", "div") and value != 0.0:
        scale = 1.0 / value
    else:
        return None
    mask: fx.Node | None = None
    scaled = step
    step = only_user(scaled)
    if step is not None and _binary_op(module, step) is torch.add:
        other = step.args[1] if step.args[0] is scaled else step.args[0]
        if not isinstance(other, fx.Node) or other is scaled:
            return None
        mask = other
        step = only_user(step)
    if step is None or not _last_axis_softmax(_module_of(module, step)):
        return None
    softmax = step
    out = only_user(softmax)
    if out is None or type(_module_of(module, out)).__name__ != "OnnxMatMul":
        return None
    if out.args[0] is not softmax or len(out.args) != 2:
        return None
    return scale, mask, softmax, out


def _last_axis_softmax(op: nn.Module | None) -> bool:
    if isinstance(op, nn.Softmax):
        return op.dim == -1
    if type(op).__name__ == "OnnxSoftmaxV1V11":
        return getattr(op, "axis", None) == -1 and not getattr(op, "is_log", False)
    return False


class Linear(nn.Module):
    """MatMul by a constant [in, out] matrix, then Add of a constant [out] bias, as one
    `linear` call: the bias is added in the GEMM's epilogue (cuBLASLt), not by a kernel that
    reads and writes the product again."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def fuse_matmul_bias(module: fx.GraphModule) -> int:
    """Rewrite MatMul(x, constant [in, out]) -> Add(constant [out]) into `Linear`; returns how
    many. Only where the product has that one user (nothing else reads it without the bias)."""
    graph = module.graph
    fused = 0
    for node in list(graph.nodes):
        if type(_module_of(module, node)).__name__ != "OnnxMatMul" or len(node.args) != 2:
            continue
        weight = _constant(module, node.args[1])
        if weight is None or weight.dim() != 2 or not weight.is_floating_point():
            continue
        if len(node.users) != 1:
            continue
        (add,) = node.users
        if _binary_op(module, add) is not torch.add:
            continue
        other = add.args[1] if add.args[0] is node else add.args[0]
        bias = _constant(module, other)
        if bias is None or bias.shape != (weight.shape[1],) or bias.dtype != weight.dtype:
            continue
        name = _fresh(dict(module.named_children()), f"{node.target}_linear")
        module.add_submodule(name, Linear(weight, bias))
        with graph.inserting_before(add):
            new = graph.call_module(name, args=(node.args[0],))
        add.replace_all_uses_with(new)
        graph.erase_node(add)
        graph.erase_node(node)
        fused += 1
    if fused:
        _rewritten(module, dead_code=True)
    return fused


def _binary_op(module: fx.GraphModule, node: fx.Node | None) -> Callable[..., Any] | None:
    """The torch function of an onnx2torch Add/Sub/Mul/Div node with two inputs and numpy-style
    broadcasting (not opset 1-6's `broadcast=1` with an axis); None for any other node."""
    op = _module_of(module, node) if node is not None else None
    if type(op).__name__ != "OnnxBinaryMathOperation" or getattr(op, "broadcast", None) == 1:
        return None
    if node is None or len(node.args) != 2:
        return None
    function: Callable[..., Any] | None = getattr(op, "math_op_function", None)
    return function


def _rewritten(module: fx.GraphModule, *, dead_code: bool) -> None:
    """After a rewrite of `module`'s graph: drop what nothing reads, check, regenerate code."""
    if dead_code:
        module.graph.eliminate_dead_code()
    module.graph.lint()
    module.recompile()
    module.delete_all_unused_submodules()


def _module_of(module: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module" or not isinstance(node.target, str):
        return None
    return module.get_submodule(node.target)


def _fusable_conv(conv: nn.Module | None) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def convert(
    model: onnx.ModelProto,
    *,
    dtype: torch.dtype | None = None,
    fold_batchnorm: bool = True,
    fuse_conv_relu: bool = False,
    fuse_attention: bool = False,
    fuse_linear: bool = False,
) -> Conversion:
    """The whole path: rewrites, then onnx2torch, as an eval-mode ``fx.GraphModule`` on the CPU.

    A node onnx2torch cannot convert raises `UnsupportedNodeError` naming it.
    """
    folded = casts = fused = 0
    # weights behind Identity aliases and in Constant nodes become initializers: onnx2torch's
    # Conv, Gemm and norm converters read their weights from initializers only
    model, _ = normalize(model)
    if fold_batchnorm:
        model, folded = fold_batch_norms(model)
    try:
        module = _onnx2torch_convert(model)
    except Exception as exc:  # converters raise KeyError, NotImplementedError, ValueError, ...
        node = _node_being_converted(exc)
        if node is None:
            raise
        raise UnsupportedNodeError(
            node=node.name or node.unique_name,
            op_type=node.operation_type,
            domain=node.domain,
            converter="onnx2torch",
            reason=_reason(exc),
        ) from exc
    check_outputs(module, model)
    reshapes = static_reshapes(module) + gathers_without_host_reads(module)
    if dtype is not None and dtype != torch.float32:
        casts = retarget_float_casts(module, dtype)
    if fuse_conv_relu:
        fused = fuse_conv_relu_chains(module)
    attention = fuse_attention_chains(module) if fuse_attention else 0
    linear = fuse_matmul_bias(module) if fuse_linear else 0
    return Conversion(
        module.eval(),
        folded,
        casts,
        fused,
        reshapes,
        custom_ops_used(model),
        fused_attention=attention,
        fused_linear=linear,
    )


def _node_being_converted(exc: BaseException) -> OnnxNode | None:
    """The node onnx2torch's convert loop was on when `exc` was raised, read from the traceback.

    onnx2torch's converters raise bare KeyErrors ("'onnx::Conv_403'") that name no node; its
    convert loop holds the node in a local variable, which the traceback keeps.
    """
    node: OnnxNode | None = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__") == "onnx2torch.converter":
            found = frame.f_locals.get("onnx_node")
            if isinstance(found, OnnxNode):
                node = found
        tb = tb.tb_next
    return node


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        # a KeyError's text is the bare key: say what it was looking for
        return f"{exc.args[0]!r} is not an initializer or constant it can read (KeyError)"
    text = " ".join(str(exc).split())
    return f"{text[:300] or type(exc).__name__} ({type(exc).__name__})"


def check_outputs(module: fx.GraphModule, model: onnx.ModelProto) -> None:
    """onnx2torch returns one value per producing node: refuse graphs where that is ambiguous."""
    producers: dict[str, onnx.NodeProto] = {out: n for n in model.graph.node for out in n.output}
    seen: list[int] = []
    for value in model.graph.output:
        node = producers.get(value.name)
        if node is None:
            raise NotImplementedError(
                f"graph output '{value.name}' is a graph input or an initializer, not a node's "
                "output: onnx2torch cannot return it"
            )
        if len(node.output) > 1:
            raise NotImplementedError(
                f"graph output '{value.name}' is one of several outputs of {node.op_type} "
                f"'{node.name}': onnx2torch returns that node's outputs together"
            )
        if id(node) in seen:
            raise NotImplementedError(f"graph output '{value.name}' is listed twice")
        seen.append(id(node))


def _fresh(names: dict[str, Any], base: str) -> str:
    name, index = base, 1
    while name in names:
        index += 1
        name = f"{base}_{index}"
    return name
