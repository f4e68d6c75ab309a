"""The `fp16` pass: weights and activations to float16 with ONNX Runtime's converter, I/O kept FP32.

On CPUs without native FP16 it saves memory, not time (REFERENCE.md measured no gain on ResNet-50).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import onnx

from crossinfer.errors import CompileError
from crossinfer.model import ModelArtifact
from crossinfer.passes.base import PassContext, tool_versions, write_provenance
from crossinfer.passes.simplify import finish_model

# Added to the converter's own DEFAULT_OP_BLOCK_LIST (ML-domain and index ops), kept FP32:
# - LayerNormalization, ReduceMean, Pow: the variance is a mean of squares, and a square passes
#   FP16's 65504 once an activation passes 256. Measured on zoo:bert-base (2 layers, seq 16):
#   blocking LayerNormalization cut the max abs error 0.0025 -> 0.0021 for 10 more Casts.
# - Softmax and Erf were measured too: ORT CPU loads and runs them in FP16 with no accuracy change
#   (Softmax subtracts the row max first), so blocking them would only add Casts.
FP16_BLOCKED_OPS = ("LayerNormalization", "ReduceMean", "Pow")


@dataclass(frozen=True)
class Fp16Config:
    """`keep_io_types`: inputs and outputs stay FP32 (Casts at the edges), so callers need no change.

    `op_block_list`: op types left in FP32, on top of the converter's default list.
    """

    keep_io_types: bool = True
    op_block_list: tuple[str, ...] = FP16_BLOCKED_OPS


class Fp16Pass:
    """Convert float tensors to float16, then put the graph back in the order ONNX requires."""

    name = "fp16"
    config_type = Fp16Config
    targets = ("onnxruntime",)

    def apply(
        self, artifact: ModelArtifact, config: Fp16Config, out_path: Path, context: PassContext
    ) -> Path:
        from onnxruntime.transformers.float16 import (
            DEFAULT_OP_BLOCK_LIST,
            convert_float_to_float16,
        )

        blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.op_block_list))
        try:
            model = convert_float_to_float16(
                artifact.load_proto(),
                keep_io_types=config.keep_io_types,
                op_block_list=blocked,
            )
        except Exception as exc:  # the converter asserts and raises ValueError on odd graphs
            raise CompileError(f"FP16 conversion of {artifact.source} failed: {exc}") from exc
        # The "Cast fix": the converter appends the Casts it inserts at the end of the node list,
        # after their consumers; ORT sorts for itself, but onnx.checker (load_model) refuses it.
        topological_sort(model.graph)
        finish_model(model, artifact, out_path)
        ops = collections.Counter(node.op_type for node in model.graph.node)
        fp16_initializers = sum(
            1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16
        )
        write_provenance(
            out_path,
            parent=artifact,
            pass_name=self.name,
            config=config,
            tools=tool_versions("onnxruntime"),
            extra={
                "op_block_list_applied": blocked,
                "cast_nodes": ops.get("Cast", 0),
                "fp16_initializers": fp16_initializers,
            },
        )
        return out_path


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` in place so every node follows the producers of its inputs.

    Stable: nodes already in order keep their relative order. Names produced by no node (graph
    inputs, initializers, outer-scope names used by subgraphs) count as available from the start.
    """
    produced = {output for node in graph.node for output in node.output if output}
    available = {name for name in _inputs(graph) if name not in produced}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        waiting = []
        for node in pending:
            if all(name in available for name in _node_inputs(node) if name in produced):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            names = ", ".join(node.name or node.op_type for node in waiting[:5])
            raise CompileError(f"the FP16 graph has a cycle through {names}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def _inputs(graph: onnx.GraphProto) -> set[str]:
    return {value.name for value in graph.input} | {t.name for t in graph.initializer}


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """The node's inputs plus the outer-scope names its subgraphs (If, Loop, Scan) read."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        subgraphs = list(attribute.g.node) if attribute.HasField("g") else []
        for graph in attribute.graphs:
            subgraphs.extend(graph.node)
        for sub in subgraphs:
            names.extend(name for name in sub.input if name)
    return names
