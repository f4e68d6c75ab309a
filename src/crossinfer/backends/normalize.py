"""Exported graphs made plain before a converter sees them: constants as initializers, no Identity.

Both converters that build their own kernels (onnx_to_torch, onnx_to_jax) call `normalize` first.
Exporters alias identical tensors through ``Identity`` nodes (a Conv bias is then a node's output,
not an initializer) and emit weights as ``Constant`` nodes; converters that read weights at
conversion time (onnx2torch's Conv, Gemm, norms) need initializers. ``simplify`` (onnxslim) does
the same folding, and more, as an optimization pass; this is the part converters cannot do without.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from crossinfer.onnx_graph import all_nodes

__all__ = ["Normalization", "normalize"]

_DEFAULT_DOMAINS = ("", "ai.onnx")
# Constant's value attributes, each with the dtype an initializer of it gets
_CONSTANT_SCALARS = {
    "value_float": onnx.TensorProto.FLOAT,
    "value_floats": onnx.TensorProto.FLOAT,
    "value_int": onnx.TensorProto.INT64,
    "value_ints": onnx.TensorProto.INT64,
}


@dataclass(frozen=True)
class Normalization:
    """What `normalize` changed: how many Constant nodes became initializers, how many Identity
    nodes were bypassed."""

    constants_to_initializers: int = 0
    identities_removed: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.constants_to_initializers or self.identities_removed)


def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Normalization]:
    """A copy of `model` with Constant nodes as initializers and Identity nodes bypassed.

    An Identity whose output is a graph output stays (the output must keep its name). Only the
    top-level graph is rewritten; a subgraph (If/Loop body) that reads a renamed value from the
    outer scope is renamed with it. The model is returned unchanged (not copied) when there is
    nothing to do.
    """
    graph = model.graph
    if not any(
        n.op_type in ("Constant", "Identity") and n.domain in _DEFAULT_DOMAINS for n in graph.node
    ):
        return model, Normalization()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    constants = _constants_to_initializers(graph)
    identities = _bypass_identities(graph)
    return copy, Normalization(constants, identities)


def _constants_to_initializers(graph: onnx.GraphProto) -> int:
    # a graph output stays a node's output: some converters cannot return an initializer
    graph_outputs = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        tensor = None
        if node.domain in _DEFAULT_DOMAINS and not set(node.output) & graph_outputs:
            tensor = _constant_tensor(node)
        if tensor is None:
            kept.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(kept)
    return count


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds, or None (not a Constant, or a sparse/string one)."""
    if node.op_type != "Constant" or len(node.attribute) != 1 or len(node.output) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        return tensor
    if attr.name in _CONSTANT_SCALARS:
        value = helper.get_attribute_value(attr)
        dims: list[int] = [] if attr.name in ("value_float", "value_int") else [len(value)]
        values = [value] if not dims else list(value)
        return helper.make_tensor(node.output[0], _CONSTANT_SCALARS[attr.name], dims, values)
    return None  # sparse_value, value_string(s): left to the converter


def _bypass_identities(graph: onnx.GraphProto) -> int:
    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        if (
            node.op_type == "Identity"
            and node.domain in _DEFAULT_DOMAINS
            and len(node.input) == 1
            and len(node.output) == 1
            and node.output[0] not in graph_outputs
        ):
            source = node.input[0]
            rename[node.output[0]] = rename.get(source, source)  # chains resolve to their root
            continue
        kept.append(node)
    if not rename:
        return 0
    for node in kept:
        _rename_inputs(node, rename)
        for sub in all_nodes_below(node):
            _rename_inputs(sub, rename)
    del graph.node[:]
    graph.node.extend(kept)
    # value_info of a bypassed name describes a value that no longer exists
    stale = [v for v in graph.value_info if v.name in rename]
    for value in stale:
        graph.value_info.remove(value)
    return len(rename)


def all_nodes_below(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The nodes of `node`'s subgraphs (If branches, Loop bodies), at any depth."""
    found: list[onnx.NodeProto] = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            found.extend(all_nodes(sub))
    return found


def _rename_inputs(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    for index, name in enumerate(node.input):
        if name in rename:
            node.input[index] = rename[name]
