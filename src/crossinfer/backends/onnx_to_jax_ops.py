"""JAX lowerings for ONNX ops that exported models use and jaxonnxruntime 0.3 lacks or limits.

Comparisons (GreaterOrEqual, Greater), HardSigmoid/HardSwish (MobileNetV3), and pooling with
``ceil_mode=1`` (GoogLeNet, SqueezeNet; jaxonnxruntime refuses it). onnx_to_jax merges
`EXTRA_LOWERINGS` into its own table; each takes (attributes, inputs, compute dtype).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from onnx import numpy_helper

Value = Any
Lowering = Callable[[Mapping[str, Any], list[Value], np.dtype[Any]], list[Value]]

__all__ = ["EXTRA_LOWERINGS", "pool_padding"]


def _xp(*values: Value) -> Any:
    """numpy when every value is static (folds at trace time), else jax.numpy."""
    return np if all(isinstance(v, np.ndarray | np.generic) for v in values) else jnp


def _binary(fn: str) -> Lowering:
    def lower(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
        xp = _xp(*inputs)
        return [getattr(xp, fn)(inputs[0], inputs[1])]

    return lower


def _unary(fn: str) -> Lowering:
    def lower(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
        return [getattr(_xp(inputs[0]), fn)(inputs[0])]

    return lower


def _is_inf(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    x = inputs[0]
    xp = _xp(x)
    positive = int(attrs.get("detect_positive", 1))
    negative = int(attrs.get("detect_negative", 1))
    return [
        xp.logical_or(
            xp.logical_and(xp.isposinf(x), positive == 1),
            xp.logical_and(xp.isneginf(x), negative == 1),
        )
    ]


def _mod(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    xp = _xp(*inputs)
    # fmod=1: the sign of the dividend (C's fmod); fmod=0, integers only: the divisor's (Python's %)
    fn = xp.fmod if int(attrs.get("fmod", 0)) else xp.mod
    return [fn(inputs[0], inputs[1])]


def _cumsum(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    x, axis_value = inputs[0], inputs[1]
    xp = _xp(x)
    if not isinstance(axis_value, np.ndarray | np.generic):
        raise NotImplementedError(
            "CumSum's axis is computed from the model's inputs; jit needs it at compile time "
            "(make it an initializer or a Constant)"
        )
    axis = int(np.asarray(axis_value).reshape(()))
    y = xp.flip(x, axis=axis) if int(attrs.get("reverse", 0)) else x
    out = xp.cumsum(y, axis=axis, dtype=y.dtype)
    if int(attrs.get("exclusive", 0)):
        out = out - y
    if int(attrs.get("reverse", 0)):
        out = xp.flip(out, axis=axis)
    return [out]


def _constant_of_shape(
    attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]
) -> list[Value]:
    # jaxonnxruntime 0.3 fails without a `value` attribute (ONNX's default: float32 zero)
    value = attrs.get("value")
    fill = numpy_helper.to_array(value).reshape(()) if value is not None else np.float32(0)
    shape = tuple(int(d) for d in np.asarray(inputs[0]).reshape(-1))
    return [np.full(shape, fill, dtype=fill.dtype)]


def _hard_sigmoid(
    attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]
) -> list[Value]:
    x = inputs[0]
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    return [jnp.clip(x * jnp.asarray(alpha, x.dtype) + jnp.asarray(beta, x.dtype), 0, 1)]


def _hard_swish(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    x = inputs[0]
    # ONNX's HardSwish is x * HardSigmoid(x) with alpha 1/6, beta 0.5
    gate = jnp.clip(x * jnp.asarray(1 / 6, x.dtype) + jnp.asarray(0.5, x.dtype), 0, 1)
    return [x * gate]


def pool_padding(
    spatial: Sequence[int], attrs: Mapping[str, Any]
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(the model's pads, extra end padding that ceil_mode adds) per spatial dim.

    Output size and the ceil rule follow ONNX's reference (and PyTorch): a last window that would
    start inside the end padding alone is dropped.
    """
    kernel = [int(k) for k in attrs["kernel_shape"]]
    rank = len(kernel)
    strides = [int(s) for s in attrs.get("strides", [1] * rank)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * rank)]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    pads = [int(p) for p in attrs.get("pads", [0] * 2 * rank)]
    explicit: list[tuple[int, int]] = []
    extra: list[tuple[int, int]] = []
    for i in range(rank):
        span = (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = math.ceil(spatial[i] / strides[i])
            total = max((out - 1) * strides[i] + span - spatial[i], 0)
            small, large = total // 2, total - total // 2
            explicit.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
            extra.append((0, 0))
            continue
        begin, end = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + rank])
        padded = spatial[i] + begin + end
        if int(attrs.get("ceil_mode", 0)):
            out = math.ceil((padded - span) / strides[i]) + 1
            if (out - 1) * strides[i] >= spatial[i] + begin:
                out -= 1
        else:
            out = (padded - span) // strides[i] + 1
        explicit.append((begin, end))
        extra.append((0, max((out - 1) * strides[i] + span - padded, 0)))
    return explicit, extra


def _window(attrs: Mapping[str, Any], rank: int) -> tuple[tuple[int, ...], ...]:
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    strides = tuple(int(s) for s in attrs.get("strides", [1] * rank))
    dilations = tuple(int(d) for d in attrs.get("dilations", [1] * rank))
    return (1, 1, *kernel), (1, 1, *strides), (1, 1, *dilations)


def _max_pool(attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]) -> list[Value]:
    x = jnp.asarray(inputs[0])
    explicit, extra = pool_padding(x.shape[2:], attrs)
    dims, strides, dilations = _window(attrs, x.ndim - 2)
    padding = [(0, 0), (0, 0)] + [
        (b + eb, e + ee) for (b, e), (eb, ee) in zip(explicit, extra, strict=True)
    ]
    low = -np.inf if jnp.issubdtype(x.dtype, jnp.floating) else np.iinfo(x.dtype).min
    init = jnp.asarray(low, x.dtype)
    y = jax.lax.reduce_window(x, init, jax.lax.max, dims, strides, padding, None, dilations)
    return [y]


def _average_pool(
    attrs: Mapping[str, Any], inputs: list[Value], dtype: np.dtype[Any]
) -> list[Value]:
    x = jnp.asarray(inputs[0])
    explicit, extra = pool_padding(x.shape[2:], attrs)
    dims, strides, dilations = _window(attrs, x.ndim - 2)
    padding = [(0, 0), (0, 0)] + [
        (b + eb, e + ee) for (b, e), (eb, ee) in zip(explicit, extra, strict=True)
    ]
    zero = jnp.asarray(0, x.dtype)
    total = jax.lax.reduce_window(x, zero, jax.lax.add, dims, strides, padding, None, dilations)
    # the divisor counts the input's elements, plus the model's pads with count_include_pad;
    # the end padding ceil_mode adds is never counted (ONNX's reference, PyTorch)
    ones = np.ones((1, 1, *x.shape[2:]), np.float32)
    if int(attrs.get("count_include_pad", 0)):
        ones = np.pad(ones, [(0, 0), (0, 0), *explicit], constant_values=1.0)
        count_padding = [(0, 0), (0, 0), *extra]
    else:
        count_padding = padding
    count = jax.lax.reduce_window(
        jnp.asarray(ones),
        jnp.asarray(0, jnp.float32),
        jax.lax.add,
        dims,
        strides,
        count_padding,
        None,
        dilations,
    )
    return [(total / count.astype(x.dtype)).astype(x.dtype)]


EXTRA_LOWERINGS: dict[str, Lowering] = {
    "AveragePool": _average_pool,
    "ConstantOfShape": _constant_of_shape,
    "CumSum": _cumsum,
    "Floor": _unary("floor"),
    "IsInf": _is_inf,
    "IsNaN": _unary("isnan"),
    "Mod": _mod,
    "Round": _unary("round"),  # half to even, as ONNX's Round
    "Sign": _unary("sign"),
    "Greater": _binary("greater"),
    "GreaterOrEqual": _binary("greater_equal"),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Xor": _binary("logical_xor"),
    "LessOrEqual": _binary("less_equal"),
    "MaxPool": _max_pool,
}
