"""ONNX graph -> one JAX function for XLA to jit: jaxonnxruntime's op library plus lowerings of our own.

Ours (OWN_LOWERINGS) cover what jaxonnxruntime 0.3 lacks or gets wrong under JAX 0.10
(LayerNormalization, Gelu, Clip) and the ops that decide what stays static and which precision
runs (Constant, Shape, Size, Cast); every other op goes to jaxonnxruntime's handler for the
model's opset. Values computable without the model inputs (shape arithmetic, constants) are
folded to numpy while tracing, so ops that need static arguments (Reshape's shape) get them,
and jax.jit retraces by itself for every new input shape.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import onnx
from jaxonnxruntime import call_onnx
from jaxonnxruntime import config as jaxort_config
from jaxonnxruntime.core.onnx_node import OnnxNode
from onnx import helper, numpy_helper

from crossinfer.backends.batchnorm_folding import fold_batch_norms
from crossinfer.backends.normalize import normalize
from crossinfer.backends.onnx_to_jax_ops import EXTRA_LOWERINGS
from crossinfer.errors import UnsupportedNodeError
from crossinfer.onnx_graph import all_nodes, same_signature

# Static arguments (Reshape's shape, Pad's pads) come from values we fold to numpy while
# tracing, not only from initializers: the folded values are exact for the shapes traced.
jaxort_config.update("jaxort_only_allow_initializers_as_static_args", False)

Value = Any  # np.ndarray (static, folded), a jax array or tracer, or None (absent optional input)
Lowering = Callable[[Mapping[str, Any], list[Value], np.dtype[Any]], list[Value]]

_DEFAULT_DOMAINS = ("", "ai.onnx")
# A float initializer this small stays a numpy constant: ops may need it static (Clip bounds).
_STATIC_INITIALIZER_ELEMENTS = 16
# computed in FP32 whatever the compute precision: exponentials and their sums lose most in 8 bits
_FP32_OPS = frozenset({"Softmax", "LogSoftmax"})
# jaxonnxruntime's handler table is class state set per opset: one model traces at a time.
_HANDLER_LOCK = threading.RLock()


# A node that cannot be lowered: errors.UnsupportedNodeError names the node, its op and domain.
LoweringError = UnsupportedNodeError


def _lowering_error(node: str, op: str, message: str, domain: str = "") -> UnsupportedNodeError:
    return UnsupportedNodeError(node=node, op_type=op, domain=domain, reason=message)


# --- lowerings of our own ------------------------------------------------------------------


def _constant(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    if "value" in attrs:
        return [numpy_helper.to_array(attrs["value"])]
    for key, kind in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return [np.asarray(attrs[key], dtype=kind)]
    raise NotImplementedError(f"Constant with attribute(s) {sorted(attrs)} is not supported")


def _shape(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    # shapes are static under jit: the result is numpy, so shape arithmetic folds
    dims = tuple(inputs[0].shape)[attrs.get("start", 0) : attrs.get("end")]
    return [np.asarray(dims, dtype=np.int64)]


def _size(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    return [np.asarray(int(np.prod(inputs[0].shape)), dtype=np.int64)]


def _cast(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    to = int(attrs["to"])
    target = np.dtype(ml_dtypes.bfloat16) if to == onnx.TensorProto.BFLOAT16 else None
    target = target or helper.tensor_dtype_to_np_dtype(to)
    x = inputs[0]
    if isinstance(x, np.ndarray):
        return [x.astype(target)]
    # the model's FP32 is the session's compute precision: a Cast to float must not undo it
    if target == np.float32:
        target = dtype
    return [x.astype(_NARROW.get(np.dtype(target), target))]


def _cast_like(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    # Cast to the second input's type; jaxonnxruntime 0.3's CastLike fails on most versions
    target = np.dtype(inputs[1].dtype)
    if target.itemsize == 1 and target.kind == "V":
        # float8/float4 (ml_dtypes): ONNX saturates (or not, per `saturate`); astype does neither
        raise NotImplementedError(f"CastLike to {target} is not lowered (saturation semantics)")
    x = inputs[0]
    if isinstance(x, np.ndarray | np.generic):
        return [np.asarray(x).astype(target)]
    return [x.astype(_NARROW.get(target, target))]


def _clip(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    x = inputs[0]
    low = inputs[1] if len(inputs) > 1 else attrs.get("min")
    high = inputs[2] if len(inputs) > 2 else attrs.get("max")
    # min/max rather than jnp.clip: its keyword names changed across JAX releases
    if low is not None:
        x = jnp.maximum(x, jnp.asarray(low, dtype=x.dtype))
    if high is not None:
        x = jnp.minimum(x, jnp.asarray(high, dtype=x.dtype))
    return [x]


def _layer_norm(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = int(attrs.get("axis", -1)) % x.ndim
    axes = tuple(range(axis, x.ndim))
    # statistics in FP32 whatever the compute precision (ONNX's stash_type=1 says the same)
    xf = jnp.asarray(x).astype(jnp.float32)
    mean = jnp.mean(xf, axis=axes, keepdims=True)
    inv_std = jax.lax.rsqrt(
        jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True) + attrs.get("epsilon", 1e-5)
    )
    y = ((xf - mean) * inv_std).astype(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv_std]


def _gelu(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    approximate = attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    return [jax.nn.gelu(inputs[0], approximate=approximate == "tanh")]


OWN_LOWERINGS: dict[str, Lowering] = {
    "Cast": _cast,
    "CastLike": _cast_like,
    "Clip": _clip,
    "Constant": _constant,
    "Gelu": _gelu,
    "LayerNormalization": _layer_norm,
    "Shape": _shape,
    "Size": _size,
    **EXTRA_LOWERINGS,
}


# --- which path runs which op --------------------------------------------------------------


def op_key(node: onnx.NodeProto) -> str:
    """``Relu`` for the default domain, ``com.example:Relu`` for others (crossinfer's spelling)."""
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}:{node.op_type}"


def _opsets(model: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    # jaxonnxruntime keys its handlers by domain "" only
    opsets = []
    for opset in model.opset_import:
        copy = onnx.OperatorSetIdProto()
        copy.CopyFrom(opset)
        if copy.domain == "ai.onnx":
            copy.domain = ""
        opsets.append(copy)
    return opsets


def _jaxort_handlers(model: onnx.ModelProto) -> dict[str, Any]:
    """jaxonnxruntime's handler per op type for this model's default-domain opset."""
    # its public converter (call_onnx_model) runs every node eagerly on sample inputs and
    # fixes the shapes; the handler table lets us trace under jax.jit instead
    handlers: dict[str, dict[str, Any]] = call_onnx._get_all_handlers(_opsets(model))
    return handlers.get("", {})


def lowering_paths(model: onnx.ModelProto) -> dict[str, str]:
    """Each op type in the model -> "crossinfer", "jaxonnxruntime" or "unsupported"."""
    with _HANDLER_LOCK:
        jaxort = _jaxort_handlers(model)
    paths: dict[str, str] = {}
    for node in all_nodes(model.graph):
        key = op_key(node)
        if node.domain in _DEFAULT_DOMAINS and node.op_type in OWN_LOWERINGS:
            paths[key] = "crossinfer"
        elif node.domain in _DEFAULT_DOMAINS and node.op_type in jaxort:
            paths[key] = "jaxonnxruntime"
        else:
            paths[key] = "unsupported"
    return paths


def unsupported_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    return tuple(sorted(op for op, path in lowering_paths(model).items() if path == "unsupported"))


# --- the program ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JaxProgram:
    """A model as ``fn(params, inputs) -> outputs``; jit it and call it with ``params``."""

    fn: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
    params: dict[str, np.ndarray]  # float initializers at the compute precision, host memory
    node_names: tuple[str, ...]
    paths: dict[str, str]  # op type -> lowering path
    compute_dtype: np.dtype[Any]
    folded_batch_norms: int = 0


def build_program(model: onnx.ModelProto, compute_dtype: np.dtype[Any]) -> JaxProgram:
    """Split initializers into traced params and static constants; raise on unsupported ops."""
    missing = unsupported_ops(model)
    if missing:
        raise _lowering_error(
            "<model>", ", ".join(missing), "no JAX lowering (neither jaxonnxruntime nor ours)"
        )
    names = tuple(n.name or f"<{n.op_type}#{i}>" for i, n in enumerate(model.graph.node))
    original = model
    # constants as initializers (static or params by size), Identity aliases bypassed
    model, _ = normalize(model)
    # the program casts params to its compute precision itself: fold into FP32 weights
    model, folded = fold_batch_norms(model, weight_dtype=np.float32)
    graph = model.graph
    static: dict[str, np.ndarray] = {}
    params: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f" and array.size > _STATIC_INITIALIZER_ELEMENTS:
            params[init.name] = array.astype(compute_dtype)
        else:
            static[init.name] = array
    initialized = set(static) | set(params)
    graph_inputs = [i for i in graph.input if i.name not in initialized]
    output_types = {o.name: device_dtype(o.type.tensor_type.elem_type) for o in graph.output}
    nodes = list(graph.node)
    labels = tuple(n.name or f"<{n.op_type}#{i}>" for i, n in enumerate(nodes))

    def fn(params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
        env: dict[str, Value] = dict(static)
        env.update(params)
        for spec in graph_inputs:
            value = inputs[spec.name]
            env[spec.name] = value.astype(compute_dtype) if value.dtype == np.float32 else value
        with _HANDLER_LOCK, warnings.catch_warnings():
            # without jax_enable_x64 int64 runs as int32 (device_dtype): indices fit, and
            # handlers that ask for int64 get int32 with a warning we expect
            warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")
            handlers = _jaxort_handlers(model)
            for node, name in zip(nodes, labels, strict=True):
                values = [env[i] if i else None for i in node.input]
                outputs = _lower_node(node, name, values, handlers, compute_dtype)
                for out_name, value in zip(node.output, outputs, strict=False):
                    if out_name:
                        env[out_name] = value
        return {o.name: jnp.asarray(env[o.name]).astype(output_types[o.name]) for o in graph.output}

    return JaxProgram(
        fn=fn,
        params=params,
        node_names=names,  # the model's own nodes: a folded BatchNormalization ran in its Conv
        paths=lowering_paths(original),
        compute_dtype=np.dtype(compute_dtype),
        folded_batch_norms=folded,
    )


def device_dtype(onnx_type: int) -> np.dtype[Any]:
    """The dtype a tensor of this ONNX type has on the device: 64-bit types run as 32-bit.

    JAX without ``jax_enable_x64`` has no 64-bit types (and with it, Python floats turn FP64);
    the session converts 64-bit inputs and outputs on the host.
    """
    if onnx_type == onnx.TensorProto.BFLOAT16:
        bf16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bf16
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))
    narrow: np.dtype[Any] = _NARROW.get(dtype, dtype)
    return narrow


_NARROW = {
    np.dtype(np.int64): np.dtype(np.int32),
    np.dtype(np.uint64): np.dtype(np.uint32),
    np.dtype(np.float64): np.dtype(np.float32),
}


def _lower_node(
    node: onnx.NodeProto,
    name: str,
    values: list[Value],
    handlers: Mapping[str, Any],
    compute_dtype: np.dtype[Any],
) -> Sequence[Value]:
    static = all(v is None or isinstance(v, np.ndarray | np.generic) for v in values)
    if not static and compute_dtype != np.float32:
        # folded FP32 constants meet traced values at the compute precision
        values = [
            v.astype(compute_dtype) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v
            for v in values
        ]
    try:
        if static:
            # no model input reaches this node: evaluate it now, keep the result static
            with jax.ensure_compile_time_eval():
                outputs = _call(node, values, handlers, compute_dtype)
            return [None if o is None else np.asarray(o) for o in outputs]
        if node.op_type in _FP32_OPS and compute_dtype != np.float32:
            upcast = [_as_float32(v) for v in values]
            outputs = _call(node, upcast, handlers, compute_dtype)
            return [None if o is None else o.astype(compute_dtype) for o in outputs]
        return _call(node, values, handlers, compute_dtype)
    except LoweringError:
        raise
    except jax.errors.ConcretizationTypeError as exc:
        raise _lowering_error(
            name,
            node.op_type,
            "needs an input known at compile time, but it depends on the "
            f"model's inputs (data-dependent shapes cannot be jitted): {_first_line(exc)}",
            node.domain,
        ) from exc
    except Exception as exc:  # handlers raise NotImplementedError, TypeError, ValueError, ...
        raise _lowering_error(
            name, node.op_type, f"{type(exc).__name__}: {_first_line(exc)}", node.domain
        ) from exc


def _as_float32(value: Value) -> Value:
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
        return value.astype(np.float32)
    return value


def _call(
    node: onnx.NodeProto,
    values: list[Value],
    handlers: Mapping[str, Any],
    compute_dtype: np.dtype[Any],
) -> Sequence[Value]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    own = OWN_LOWERINGS.get(node.op_type) if node.domain in _DEFAULT_DOMAINS else None
    if own is not None:
        outputs = own(attrs, values, compute_dtype)
    else:
        wrapped = OnnxNode(node, None)
        jax_fn = _handler_method(handlers[node.op_type], node.op_type)(wrapped, values)
        result = jax_fn(*values, **wrapped.attrs_dict)
        outputs = list(result) if isinstance(result, list | tuple) else [result]
    wanted = [i for i, name in enumerate(node.output) if name]
    if wanted and wanted[-1] >= len(outputs):
        # e.g. MaxPool's Indices: a later node would otherwise find no value under that name
        raise NotImplementedError(
            f"output {wanted[-1]} ('{node.output[wanted[-1]]}') is not produced by this lowering"
        )
    return outputs


def _handler_method(handler: Any, op_type: str) -> Any:
    """jaxonnxruntime's method for the model's version of the op, or for an older version with
    the same signature (jaxonnxruntime 0.3 stops at the opsets of 2023: Flatten 21-25, ...)."""
    since = int(handler.SINCE_VERSION)
    method = getattr(handler, f"version_{since}", None)
    if method is not None:
        return method
    older = sorted(
        (
            int(name.removeprefix("version_"))
            for name in dir(handler)
            if name.startswith("version_")
        ),
        reverse=True,
    )
    for version in older:
        if version < since and same_signature(op_type, since, version):
            return getattr(handler, f"version_{version}")
    return handler.handle  # raises jaxonnxruntime's own "version N is not implemented"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


__all__ = [
    "OWN_LOWERINGS",
    "JaxProgram",
    "LoweringError",
    "build_program",
    "device_dtype",
    "fold_batch_norms",
    "lowering_paths",
    "op_key",
    "unsupported_ops",
]
