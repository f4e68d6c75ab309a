"""The `simplify` pass: constant folding and dead-node removal with onnxslim, else ONNX Runtime.

Also home of `finish_model`, which every ONNX Runtime pass uses to write a file ORT 1.31 loads.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx.helper

from crossinfer.errors import CompileError, UsageError
from crossinfer.model import ModelArtifact
from crossinfer.passes.base import PassContext, tool_versions, write_provenance

ENGINES = ("auto", "onnxslim", "onnxruntime")
# ONNX Runtime 1.31 loads IR versions up to 13; onnx 1.23 writes 14 unless told otherwise.
ORT_MAX_IR_VERSION = 13
# Protobuf cannot serialise a message over 2 GiB: larger models keep their weights beside them.
_EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class SimplifyConfig:
    """`engine`: "onnxslim", "onnxruntime" (its offline basic optimizer) or "auto" (onnxslim,
    falling back to ONNX Runtime when onnxslim fails)."""

    engine: str = "auto"


class SimplifyPass:
    """Fold constants, fuse BatchNorm into Conv, drop dead nodes; the graph's meaning is unchanged."""

    name = "simplify"
    config_type = SimplifyConfig
    targets = ("onnxruntime", "openvino")

    def apply(
        self, artifact: ModelArtifact, config: SimplifyConfig, out_path: Path, context: PassContext
    ) -> Path:
        if config.engine not in ENGINES:
            raise UsageError(
                f"simplify engine '{config.engine}' is unknown: choose from {', '.join(ENGINES)}"
            )
        notes: list[str] = []
        model: onnx.ModelProto | None = None
        engine = config.engine
        if engine in ("auto", "onnxslim"):
            try:
                model = _slim(artifact)
                engine = "onnxslim"
            except Exception as exc:  # onnxslim raises whatever its graph rewrites hit
                if config.engine == "onnxslim":
                    raise CompileError(
                        f"onnxslim could not simplify {artifact.source}: {exc}; "
                        "try engine='onnxruntime'"
                    ) from exc
                notes.append(f"onnxslim failed ({type(exc).__name__}: {exc}); used onnxruntime")
        if model is None:
            model = _ort_basic(artifact, context)
            engine = "onnxruntime"
        finish_model(model, artifact, out_path)
        before = sum(artifact.op_histogram.values())
        write_provenance(
            out_path,
            parent=artifact,
            pass_name=self.name,
            config=config,
            tools=tool_versions("onnxruntime", "onnxslim"),
            extra={
                "engine": engine,
                "nodes_before": before,
                "nodes_after": len(model.graph.node),
                "notes": notes,
            },
        )
        return out_path


def _slim(artifact: ModelArtifact) -> onnx.ModelProto:
    import onnxslim

    slimmed: Any = onnxslim.slim(artifact.load_proto())
    if not isinstance(slimmed, onnx.ModelProto):
        raise TypeError(f"onnxslim returned {type(slimmed).__name__}, not a ModelProto")
    return slimmed


def _ort_basic(artifact: ModelArtifact, context: PassContext) -> onnx.ModelProto:
    import onnxruntime as ort

    scratch = _scratch_root(context)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="simplify-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        # Basic level only: its rewrites are plain ONNX; extended ones emit ORT-only fused ops.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(optimized)
        try:
            ort.InferenceSession(str(artifact.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise CompileError(
                f"ONNX Runtime could not load {artifact.source} to optimize it: {exc}"
            ) from exc
        return onnx.load(str(optimized))


def _scratch_root(context: PassContext) -> Path | None:
    if context.work_dir is None:
        return None
    context.work_dir.mkdir(parents=True, exist_ok=True)
    return context.work_dir


def finish_model(model: onnx.ModelProto, parent: ModelArtifact, out_path: Path) -> Path:
    """Make `model` loadable by ONNX Runtime 1.31 and write it to `out_path`.

    Tools stamp the newest IR version they know and list every domain ORT knows (quant_pre_process
    and ORT's optimizer add nine); keep the parent's IR where the opsets allow it, and only the
    domains some node uses.
    """
    used = {node.domain for node in model.graph.node} | {"", "ai.onnx"}
    for function in model.functions:
        used |= {node.domain for node in function.node}
    kept = [op for op in model.opset_import if op.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    floor = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(floor, min(model.ir_version, parent.ir_version, ORT_MAX_IR_VERSION))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > _EXTERNAL_DATA_BYTES:
        onnx.save(
            model,
            str(out_path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=out_path.name + ".data",
        )
    else:
        onnx.save(model, str(out_path))
    return out_path
