"""`prune`: magnitude pruning of Conv, MatMul and Gemm weight initializers to a target sparsity.

Zeroes are written into the weights; shapes and the graph stay as they were (no channel removal).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from crossinfer.errors import UsageError
from crossinfer.model import ModelArtifact
from crossinfer.passes.base import PassContext, tool_versions, write_provenance

# op type -> index of its weight input
_WEIGHT_INPUT = {"Conv": 1, "MatMul": 1, "Gemm": 1}
# protobuf cannot serialise a message of 2 GiB or more: write the weights beside it
_EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune, and how."""

    sparsity: float = 0.5  # fraction of each pruned tensor set to zero, 0 <= sparsity < 1
    structured: bool = False  # True: whole Conv output channels by L1 norm (Conv weights only)
    min_elements: int = 1024  # smaller weights (first/last layers, biases) are left alone


class PrunePass:
    """Zeroes the smallest-magnitude weights of each large Conv/MatMul/Gemm weight initializer.

    Unstructured: in each weight tensor, the `sparsity` fraction with the smallest |w| (a
    per-tensor threshold) becomes 0. Structured: in each Conv weight, the `sparsity` fraction of
    output channels with the smallest L1 norm becomes 0, with the Conv's bias entries for those
    channels. Shapes are kept: no graph surgery, so the model is not smaller or faster by itself;
    a sparse-aware runtime or a later channel-removal step must exploit the zeros. A
    BatchNormalization after a pruned Conv still adds its shift, so a pruned channel carries
    that constant rather than 0 (removing it would mean folding the constant into the next layer).

    Only initializers are pruned (weights produced by Constant nodes are not), each once even
    when several nodes share it, and only floating-point ones.
    """

    name = "prune"
    config_type = PruneConfig
    targets = ("onnxruntime", "openvino")

    def apply(
        self, artifact: ModelArtifact, config: PruneConfig, out_path: Path, context: PassContext
    ) -> Path:
        _check_config(config)
        model = onnx.ModelProto()
        model.CopyFrom(artifact.load_proto())  # the artifact may keep its proto: leave it intact
        graph = model.graph
        initializers = {init.name: init for init in graph.initializer}

        per_tensor: dict[str, dict[str, Any]] = {}
        skipped: dict[str, str] = {}
        zeros = total = 0
        for node in graph.node:
            index = _WEIGHT_INPUT.get(node.op_type)
            if node.domain not in ("", "ai.onnx") or index is None or len(node.input) <= index:
                continue
            name = node.input[index]
            if name in per_tensor or name in skipped:
                continue
            init = initializers.get(name)
            if init is None:
                continue  # an activation, or a weight made by a Constant node
            weight = numpy_helper.to_array(init)
            reason = _skip_reason(weight, node.op_type, config)
            if reason:
                skipped[name] = reason
                continue
            record: dict[str, Any] = {"op": node.op_type, "elements": int(weight.size)}
            if config.structured:
                pruned, channels = _prune_channels(weight, config.sparsity)
                record["channels_zeroed"] = len(channels)
                record["channels"] = int(weight.shape[0])
                bias = initializers.get(node.input[2]) if len(node.input) > 2 else None
                if bias is not None and channels:
                    values = numpy_helper.to_array(bias).copy()
                    values[channels] = 0
                    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
            else:
                pruned = _prune_magnitude(weight, config.sparsity)
            init.CopyFrom(numpy_helper.from_array(pruned, init.name))
            count = int(np.count_nonzero(pruned == 0))
            record["sparsity"] = count / pruned.size
            per_tensor[name] = record
            zeros += count
            total += pruned.size

        large = artifact.file_size > _EXTERNAL_DATA_BYTES
        if large:
            onnx.save(
                model, str(out_path), save_as_external_data=True, location=out_path.name + ".data"
            )
        else:
            onnx.save(model, str(out_path))
        write_provenance(
            out_path,
            parent=artifact,
            pass_name=self.name,
            config=config,
            tools=tool_versions(),
            extra={
                "sparsity": {
                    "overall": zeros / total if total else 0.0,
                    "pruned_tensors": len(per_tensor),
                    "pruned_elements": total,
                    "per_tensor": per_tensor,
                    "skipped": skipped,
                }
            },
        )
        return out_path


def _check_config(config: PruneConfig) -> None:
    if not 0.0 <= config.sparsity < 1.0:
        raise UsageError(
            f"prune sparsity must be at least 0 and below 1 (a fraction of each weight set to "
            f"zero), got {config.sparsity}: try 0.5"
        )
    if config.min_elements < 0:
        raise UsageError(f"prune min_elements must be 0 or more, got {config.min_elements}")


def _skip_reason(weight: np.ndarray, op_type: str, config: PruneConfig) -> str:
    if weight.dtype.kind != "f":
        return f"{weight.dtype} weights (already quantized?)"
    if weight.size < config.min_elements:
        return f"{weight.size} elements < min_elements {config.min_elements}"
    if config.structured and op_type != "Conv":
        return "structured pruning covers Conv output channels only"
    if config.structured and weight.ndim < 2:
        return "Conv weight without an output-channel axis"
    return ""


def _prune_magnitude(weight: np.ndarray, sparsity: float) -> np.ndarray:
    # exactly floor(sparsity * n) zeros: a threshold on |w| would zero every tie at the boundary
    count = int(sparsity * weight.size)
    flat = weight.reshape(-1).copy()
    if count:
        smallest = np.argpartition(np.abs(flat), count - 1)[:count]
        flat[smallest] = 0
    return flat.reshape(weight.shape)


def _prune_channels(weight: np.ndarray, sparsity: float) -> tuple[np.ndarray, list[int]]:
    count = int(sparsity * weight.shape[0])
    norms = np.abs(weight.astype(np.float64)).reshape(weight.shape[0], -1).sum(axis=1)
    channels = sorted(int(c) for c in np.argsort(norms, kind="stable")[:count])
    pruned = weight.copy()
    pruned[channels] = 0
    return pruned, channels
