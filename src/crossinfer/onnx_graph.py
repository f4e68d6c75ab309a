"""Walking an ONNX graph: every node, those inside If/Loop/Scan bodies included."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

__all__ = ["all_nodes", "same_signature", "subgraphs"]


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by the node's attributes (If's branches, Loop's and Scan's bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        yield from attr.graphs


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph`, each followed by the nodes of its subgraphs, depth first."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from all_nodes(sub)


def same_signature(op_type: str, newer: int, older: int) -> bool:
    """Whether default-domain `op_type` at since-version `newer` has the attributes, inputs and
    outputs it had at `older`: the re-release only admitted more element types (bfloat16 in
    opset 16, float8/int4 in 19-25), so a converter written for `older` converts it as is.
    Every version between is compared too (a change and its revert are not the same op)."""
    schemas = [
        s
        for s in onnx.defs.get_all_schemas_with_history()
        if s.name == op_type and s.domain == "" and older <= s.since_version <= newer
    ]
    if not any(s.since_version == older for s in schemas):
        return False
    signatures = {
        (
            tuple(sorted(s.attributes)),
            tuple((p.name, p.option) for p in s.inputs),
            tuple((p.name, p.option) for p in s.outputs),
        )
        for s in schemas
    }
    return len(signatures) == 1
