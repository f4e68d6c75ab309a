"""What a model costs per node: FLOPs and bytes moved, from the ONNX graph after shape inference.

Convention: 1 multiply-accumulate (MAC) = 2 FLOPs, as REFERENCE.md's checks count (ResNet-50 @224
is 4.09 G MACs = 8.2 GFLOP). Element-wise work counts one FLOP per output element.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx.shape_inference

from crossinfer.errors import ModelValidationError

__all__ = [
    "OP_CLASSES",
    "FusedGroup",
    "ModelCost",
    "NodeCost",
    "model_cost",
    "precision_bytes",
]

# What a node spends its time on; efficiency factors are fitted per class.
OP_CLASSES = (
    "conv", "depthwise-conv", "matmul", "attention", "elementwise", "normalization", "reduce",
    "data",
)  # fmt: skip

_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "Erf",
    "Gelu", "HardSigmoid", "HardSwish", "Exp", "Log", "Sqrt", "Pow", "Neg", "Abs", "Min", "Max",
    "Where", "Equal", "Less", "Greater", "Not", "And", "Or", "Cast", "Floor", "Ceil", "Round",
    "Reciprocal", "Sin", "Cos", "Elu", "Selu", "Softplus", "Mish", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear", "Identity", "Dropout",
}  # fmt: skip
# element-wise ops costlier than one FLOP per element (transcendentals approximated)
_FLOPS_PER_ELEMENT = {"Erf": 8, "Gelu": 10, "Tanh": 8, "Sigmoid": 4, "Exp": 4, "HardSwish": 3}
_NORMALIZATION = {
    "BatchNormalization": 2, "LayerNormalization": 8, "InstanceNormalization": 8,
    "GroupNormalization": 8, "Softmax": 5, "LogSoftmax": 6, "LpNormalization": 3,
    "SkipLayerNormalization": 9,
}  # fmt: skip
_REDUCE = {
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
    "GlobalAveragePool", "GlobalMaxPool", "ArgMax", "ArgMin", "TopK",
}  # fmt: skip
_POOL = {"MaxPool", "AveragePool", "LpPool"}
# Ops that only relabel a buffer: no copy at run time in any runtime this project knows.
_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Size", "Constant", "Identity"}
_CONV = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose"}
_MATMUL = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "QGemm", "FusedMatMul"}
# Element-wise followers a runtime fuses into the producing conv/matmul (epilogue fusion).
_FUSABLE = _ELEMENTWISE | {"BatchNormalization"}

_DTYPE_BYTES: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT16: 2,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.BOOL: 1,
}
_SMALL_INITIALIZER = 1024  # elements: shape and axis constants stay for data propagation
_FLOAT_TYPES: set[int] = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def precision_bytes(precision: str) -> float:
    """Bytes per element of a floating-point tensor run at `precision` ("fp32", "int8", ...)."""
    return {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}[precision]


@dataclass(frozen=True)
class NodeCost:
    """One node at batch 1: FLOPs and the elements it reads and writes.

    Element counts, not bytes, so one walk serves every precision: floating-point tensors take
    the precision's width, integer tensors (indices, shapes) keep their own.
    """

    name: str
    op_type: str
    op_class: str
    flops: float  # at batch 1
    macs: float
    weight_elements: float  # initializers read (do not grow with the batch)
    activation_elements: float  # float tensors read and written, per sample
    fixed_bytes: float = 0.0  # integer tensors, per sample (their width does not change)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    shapes_known: bool = True
    activation_tensors: tuple[tuple[str, float], ...] = ()  # (name, elements) counted above


@dataclass(frozen=True)
class FusedGroup:
    """A compute node and the element-wise followers a runtime fuses into it: one kernel."""

    nodes: tuple[NodeCost, ...]
    op_class: str  # the anchor's class
    flops: float
    weight_elements: float
    activation_elements: float  # only the tensors that cross the group's boundary
    fixed_bytes: float
    kernels: int = 1  # 0 for a group of views only (a Reshape launches nothing)

    def bytes_moved(self, precision: str, batch: int) -> float:
        width = precision_bytes(precision)
        return (self.weight_elements + batch * self.activation_elements) * width + (
            batch * self.fixed_bytes
        )


@dataclass(frozen=True)
class ModelCost:
    """Every node's cost at batch 1, the fused groups, and the input/output sizes."""

    nodes: tuple[NodeCost, ...]
    groups: tuple[FusedGroup, ...]
    io_elements: float  # model inputs + outputs per sample (what crosses a host link)
    parameter_elements: float
    unknown_shape_nodes: tuple[str, ...] = ()
    op_types: frozenset[str] = field(default_factory=frozenset)

    @property
    def flops(self) -> float:
        return sum(n.flops for n in self.nodes)

    @property
    def macs(self) -> float:
        return sum(n.macs for n in self.nodes)

    def flops_by_class(self) -> dict[str, float]:
        out: dict[str, float] = dict.fromkeys(OP_CLASSES, 0.0)
        for node in self.nodes:
            out[node.op_class] += node.flops
        return out

    def bytes_moved(self, precision: str, batch: int = 1) -> float:
        return sum(g.bytes_moved(precision, batch) for g in self.groups)

    def to_dict(self, precisions: Sequence[str] = ("fp32", "fp16", "int8")) -> dict[str, object]:
        return {
            "macs": self.macs,
            "flops": self.flops,
            "convention": "1 MAC = 2 FLOPs; element-wise ops 1 FLOP per output element",
            "flops_by_class": self.flops_by_class(),
            "bytes_moved_batch1": {p: self.bytes_moved(p) for p in precisions},
            "parameters": self.parameter_elements,
            "nodes": len(self.nodes),
            "fused_groups": len(self.groups),
            "unknown_shape_nodes": list(self.unknown_shape_nodes),
        }


def model_cost(model: onnx.ModelProto, *, batch_dim_value: int = 1) -> ModelCost:
    """Per-node costs of `model` at batch 1: symbolic and unknown leading dims are set to 1.

    Other symbolic dims (a sequence length) must be fixed in the graph; nodes whose shapes stay
    unknown cost nothing and are listed in `unknown_shape_nodes`.
    """
    fixed = _fix_batch(model, batch_dim_value)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise ModelValidationError(
            f"shape inference failed, so costs cannot be counted: {exc}; "
            "run `crossinfer optimize --passes simplify` first"
        ) from exc
    graph = inferred.graph
    shapes: dict[str, tuple[int, ...] | None] = {}
    dtypes: dict[str, int] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        shapes[info.name] = _shape(info)
        dtypes[info.name] = info.type.tensor_type.elem_type
    initializers: dict[str, tuple[int, ...]] = {}
    for init in model.graph.initializer:  # the original's: the copy holds only small ones
        initializers[init.name] = tuple(init.dims)
        shapes[init.name] = tuple(init.dims)
        dtypes[init.name] = init.data_type
    for node in graph.node:  # Constant nodes are weights too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == 4:
            tensor = node.attribute[0].t
            initializers[node.output[0]] = tuple(tensor.dims)
            shapes[node.output[0]] = tuple(tensor.dims)
            dtypes[node.output[0]] = tensor.data_type

    nodes: list[NodeCost] = []
    unknown: list[str] = []
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        cost = _node_cost(node, index, shapes, dtypes, initializers)
        if not cost.shapes_known:
            unknown.append(cost.name)
        nodes.append(cost)
    io = sum(
        _elements(shapes.get(v.name))
        for v in [*graph.input, *graph.output]
        if v.name not in initializers
    )
    params = sum(math.prod(d) for d in initializers.values())
    return ModelCost(
        nodes=tuple(nodes),
        groups=tuple(_fuse(nodes, {o.name for o in graph.output})),
        io_elements=float(io),
        parameter_elements=float(params),
        unknown_shape_nodes=tuple(unknown),
        op_types=frozenset(n.op_type for n in graph.node),
    )


# --------------------------------------------------------------------------- shapes


def _fix_batch(model: onnx.ModelProto, value: int) -> onnx.ModelProto:
    """A copy fit for shape inference: batch dims set, large weights as typed inputs.

    Shape inference needs a weight's shape, not its values; copying BERT's 440 MB of values
    took seconds. Small initializers (shapes, axes) keep their values for data propagation.
    """
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    graph = copy.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    names = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if math.prod(init.dims) <= _SMALL_INITIALIZER:
            graph.initializer.append(init)
        else:
            if init.name not in names:
                graph.input.append(
                    onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                )
    initializer_names = {i.name for i in model.graph.initializer}
    for inp in graph.input:
        if inp.name in initializer_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = value
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = value
    return copy


def _shape(info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor = info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        dims.append(int(dim.dim_value))
    return tuple(dims)


def _elements(shape: tuple[int, ...] | None) -> int:
    return 0 if shape is None else math.prod(shape)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


# --------------------------------------------------------------------------- counting


def _node_cost(
    node: onnx.NodeProto,
    index: int,
    shapes: Mapping[str, tuple[int, ...] | None],
    dtypes: Mapping[str, int],
    initializers: Mapping[str, tuple[int, ...]],
) -> NodeCost:
    op = node.op_type
    name = node.name or f"{op}_{index}"
    ins = [i for i in node.input if i]
    outs = [o for o in node.output if o]
    known = all(shapes.get(t) is not None for t in [*ins, *outs])
    out_elems = sum(_elements(shapes.get(o)) for o in outs)
    macs = 0.0
    flops = 0.0
    op_class = "elementwise"
    if op in _CONV:
        weight = shapes.get(ins[3] if op == "QLinearConv" else ins[1])
        group = int(_attr(node, "group", 1))
        if weight is not None and len(weight) >= 3:
            if op == "ConvTranspose":
                x = shapes.get(ins[0])
                macs = _elements(x) * weight[1] * math.prod(weight[2:]) if x else 0.0
            else:
                macs = out_elems * weight[1] * math.prod(weight[2:])
            # depthwise: one input channel per group, little reuse, runtimes run it at a
            # fraction of the dense convolution's speed
            op_class = "depthwise-conv" if group > 1 and weight[1] == 1 else "conv"
        else:
            op_class = "conv"
        flops = 2 * macs + (out_elems if len(ins) > 2 and op == "Conv" else 0)
    elif op in _MATMUL:
        op_class = "matmul"
        a = shapes.get(ins[0])
        b_name = ins[3] if op == "QLinearMatMul" else ins[1]
        b = shapes.get(b_name)
        if a is not None and b is not None and a and b:
            if op in ("Gemm", "QGemm"):
                k = a[0] if int(_attr(node, "transA", 0)) else a[-1]
            else:
                k = a[-1]
            macs = out_elems * k
        flops = 2 * macs + (out_elems if op == "Gemm" and len(ins) > 2 else 0)
    elif op in _NORMALIZATION:
        op_class = "normalization"
        flops = _NORMALIZATION[op] * out_elems
    elif op in _REDUCE:
        op_class = "reduce"
        flops = float(_elements(shapes.get(ins[0]))) if ins else 0.0
    elif op in _POOL:
        op_class = "reduce"
        kernel = _attr(node, "kernel_shape", [1])
        flops = out_elems * math.prod(kernel)
    elif op in _ELEMENTWISE:
        op_class = "elementwise"
        flops = _FLOPS_PER_ELEMENT.get(op, 1) * out_elems
    elif op in ("Attention", "MultiHeadAttention"):
        op_class = "matmul"  # com.microsoft fused attention: projections plus scores
        x = shapes.get(ins[0])
        w = shapes.get(ins[1]) if len(ins) > 1 else None
        if x and w and len(x) == 3:
            _, seq, hidden = x
            macs = seq * hidden * w[-1] + 2 * seq * seq * hidden
        flops = 2 * macs
    else:
        op_class = "data"  # Transpose, Concat, Gather, Slice, Pad, Resize, Split, Expand, ...

    weight_elements = 0.0
    activation = 0.0
    fixed = 0.0
    counted: list[tuple[str, float]] = []
    if op not in _VIEWS:
        for tensor in [*ins, *outs]:
            count = float(_elements(shapes.get(tensor)))
            dtype = dtypes.get(tensor, onnx.TensorProto.FLOAT)
            if tensor in initializers:
                # float weights take the precision's width; an int8 model's are already narrow
                weight_elements += (
                    count if dtype in _FLOAT_TYPES else count * _DTYPE_BYTES.get(dtype, 4) / 4
                )
            elif dtype in _FLOAT_TYPES:
                activation += count
                counted.append((tensor, count))
            else:
                fixed += count * _DTYPE_BYTES.get(dtype, 4)
    return NodeCost(
        name=name,
        op_type=op,
        op_class=op_class,
        flops=float(flops),
        macs=float(macs),
        weight_elements=weight_elements,
        activation_elements=activation,
        fixed_bytes=fixed,
        inputs=tuple(ins),
        outputs=tuple(outs),
        shapes_known=known,
        activation_tensors=tuple(counted),
    )


_ANCHORS = ("conv", "depthwise-conv", "matmul")


def _fuse(nodes: Sequence[NodeCost], graph_outputs: Iterable[str]) -> list[FusedGroup]:
    """Greedy fusion into the kernels a tuned runtime launches.

    - Epilogues: a conv/matmul absorbs the element-wise ops after it (Conv+BN+Add+ReLU, a
      MatMul's bias and GELU), as oneDNN, TensorRT, XLA and inductor do.
    - Chains: element-wise ops whose inputs come from one group join it even when a tensor has
      several readers, as long as every reader is element-wise (GELU reads its input twice).
    - Attention: MatMul(Q, K) -> scale/mask -> Softmax -> MatMul(., V) is one kernel, the
      scores never reaching memory (flash attention, ONNX Runtime's Attention, XLA's fusions).
    - Transposes read only by matmuls cost nothing: BLAS libraries take transposed operands.

    The group's traffic is what crosses its boundary: tensors produced and consumed inside
    never reach memory.
    """
    readers: dict[str, list[NodeCost]] = {}
    for node in nodes:
        for tensor in node.inputs:
            readers.setdefault(tensor, []).append(node)
    outputs = set(graph_outputs)
    folded = _transposes_into_matmuls(nodes, readers, outputs)
    producer_group: dict[str, int] = {}
    members: list[list[NodeCost]] = []
    kinds: list[str] = []  # each group's class: its anchor's, "attention" once it has one
    for node in nodes:
        target = None
        for tensor in node.inputs:
            group = producer_group.get(tensor)
            if group is None or tensor in outputs:
                continue
            users = readers.get(tensor, [])
            if node.op_type in _FUSABLE:
                epilogue = kinds[group] in (*_ANCHORS, "attention") and len(users) == 1
                chain = kinds[group] == "elementwise" and all(u.op_type in _FUSABLE for u in users)
                if epilogue or chain:
                    target = group
            elif node.op_type == "Softmax":
                if kinds[group] == "matmul" and len(users) == 1:
                    target = group
            elif (
                node.op_type == "MatMul"
                and len(users) == 1
                and kinds[group] == "matmul"
                and any(n.op_type == "Softmax" for n in members[group])
            ):
                target = group
                kinds[group] = "attention"
            if target is not None:
                break
        if target is None:
            target = len(members)
            members.append([])
            kinds.append(node.op_class)
        members[target].append(node)
        for tensor in node.outputs:
            producer_group[tensor] = target
    groups = []
    for index, group_nodes in enumerate(members):
        inner = {t for n in group_nodes for t in n.outputs if producer_group.get(t) == index}
        # an inner tensor is internal when every consumer is in the group and it is no output
        internal = {
            t
            for t in inner
            if t not in outputs
            and len(readers.get(t, [])) == sum(t in n.inputs for n in group_nodes)
            and readers.get(t)
        }
        activation = sum(n.activation_elements for n in group_nodes if n.name not in folded)
        seen: set[str] = set()
        for node in group_nodes:
            if node.name in folded:
                continue
            # an internal tensor was counted where written and where read: it never moves;
            # an outside tensor two nodes read is loaded once
            activation -= sum(n for t, n in node.activation_tensors if t in internal)
            activation -= sum(
                n for t, n in node.activation_tensors if t in seen and t in node.inputs
            )
            seen.update(t for t in node.inputs if t not in inner)
        launches = any(n.op_type not in _VIEWS and n.name not in folded for n in group_nodes)
        groups.append(
            FusedGroup(
                nodes=tuple(group_nodes),
                op_class=kinds[index],
                flops=sum(n.flops for n in group_nodes),
                weight_elements=sum(n.weight_elements for n in group_nodes),
                activation_elements=max(activation, 0.0),
                fixed_bytes=sum(n.fixed_bytes for n in group_nodes),
                kernels=1 if launches else 0,
            )
        )
    return groups


def _transposes_into_matmuls(
    nodes: Sequence[NodeCost], readers: Mapping[str, list[NodeCost]], outputs: set[str]
) -> set[str]:
    """Names of the Transposes whose output reaches only MatMuls (through views): no copy."""
    folded: set[str] = set()

    def only_matmuls(tensor: str) -> bool:
        users = readers.get(tensor, [])
        if not users or tensor in outputs:
            return False
        for user in users:
            if user.op_type in _VIEWS:
                if not all(only_matmuls(t) for t in user.outputs):
                    return False
            elif user.op_type not in ("MatMul", "FusedMatMul"):
                return False
        return True

    for node in nodes:
        if node.op_type == "Transpose" and all(only_matmuls(t) for t in node.outputs):
            folded.add(node.name)
    return folded
