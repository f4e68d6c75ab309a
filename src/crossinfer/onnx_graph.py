"""Walking an ONNX graph: every node, those inside If/Loop/Scan bodies included."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

__all__ = ["all_nodes", "subgraphs"]


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
