"""Folding inference BatchNormalization into the Conv before it, on the ONNX graph.

Both converters that build their own kernels (onnx_to_torch, onnx_to_jax) fold before converting:
one convolution instead of two kernels, and the arithmetic is done in FP64 before any cast (at
BF16, running variances and scales rounded to 8 bits cost ResNet-50 about twice the error; ONNX
Runtime and TensorRT fold them too).
"""

from __future__ import annotations

import numpy as np
import onnx
from numpy.typing import DTypeLike
from onnx import numpy_helper

from crossinfer.onnx_graph import all_nodes

__all__ = ["fold_batch_norms"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def fold_batch_norms(
    model: onnx.ModelProto, *, weight_dtype: DTypeLike | None = None
) -> tuple[onnx.ModelProto, int]:
    """A copy with each inference BatchNormalization folded into the Conv before it:
    W' = W*s, b' = (b-mean)*s+beta with s = scale/sqrt(var+eps).

    Only where the Conv's output feeds that BatchNormalization alone (and is no graph output),
    the BatchNormalization is not in training mode, and every parameter is an initializer;
    everything else is left as it was. The folded weights are stored as `weight_dtype`, by
    default the Conv weight's own dtype (the graph stays well typed). Returns the new model and
    how many were folded.
    """
    model = _copy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    producers = {out: node for node in graph.node for out in node.output}
    removed: list[onnx.NodeProto] = []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in _DEFAULT_DOMAINS:
            continue
        if len(bn.output) != 1 or any(a.name == "training_mode" and a.i for a in bn.attribute):
            continue
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(conv.output) != 1:
            continue
        if consumers.get(conv.output[0], 0) != 1 or conv.output[0] in outputs:
            continue
        params = [inits.get(name) for name in bn.input[1:5]]
        weight = inits.get(conv.input[1])
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        bias = inits.get(conv.input[2]) if has_bias else None
        if weight is None or any(p is None for p in params) or (has_bias and bias is None):
            continue
        scale, beta, mean, var = (
            numpy_helper.to_array(p).astype(np.float64)  # type: ignore[arg-type]
            for p in params
        )
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        w = numpy_helper.to_array(weight)
        dtype = w.dtype if weight_dtype is None else np.dtype(weight_dtype)
        factor = scale / np.sqrt(var + eps)
        new_w = (w.astype(np.float64) * factor.reshape(-1, *([1] * (w.ndim - 1)))).astype(dtype)
        b = numpy_helper.to_array(bias).astype(np.float64) if bias is not None else 0.0
        new_b = ((b - mean) * factor + beta).astype(dtype)
        w_name = _fresh(inits, f"{conv.input[1]}_bnfolded")
        b_name = _fresh(inits, f"{bn.output[0]}_bnfolded_bias")
        for tensor in (
            numpy_helper.from_array(new_w, w_name),
            numpy_helper.from_array(new_b, b_name),
        ):
            graph.initializer.append(tensor)
            inits[tensor.name] = tensor
        data = conv.input[0]
        del conv.input[:]
        conv.input.extend([data, w_name, b_name])
        conv.output[0] = bn.output[0]
        removed.append(bn)
    for node in removed:
        graph.node.remove(node)
    if removed:
        _drop_unused_initializers(graph)
    return model, len(removed)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _fresh(names: dict[str, onnx.TensorProto], base: str) -> str:
    name, index = base, 1
    while name in names:
        index += 1
        name = f"{base}_{index}"
    return name


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    # names read inside If/Loop bodies and initializers that double as graph inputs stay
    used = {name for node in all_nodes(graph) for name in node.input}
    used |= {o.name for o in graph.output} | {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
