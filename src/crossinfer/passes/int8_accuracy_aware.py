"""The `int8-accuracy-aware` pass: ORT static INT8 that keeps the most sensitive nodes in float.

Like NNCF's quantize_with_accuracy_control: quantize all, rank nodes, un-quantize until in budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from crossinfer.accuracy import first_output, top1
from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.errors import InputError, UsageError
from crossinfer.hardware.int8 import int8_recipe
from crossinfer.model import ModelArtifact, load_model
from crossinfer.passes.base import (
    LabelledSet,
    PassContext,
    recipe_record,
    tool_versions,
    write_provenance,
)
from crossinfer.passes.int8_static import (
    METHODS,
    pre_process,
    quantization_counts,
    quantize_qdq,
    scratch_dir,
)
from crossinfer.passes.simplify import finish_model

SENSITIVITIES = ("accuracy", "output-mse")
QUANTIZABLE_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class AccuracyAwareConfig:
    """`method`, `max_samples`: as int8-static; `max_float_nodes`: most nodes left in float;
    `sensitivity`: how nodes are ranked ("accuracy" on the data set, or "output-mse" of logits)."""

    method: str = "minmax"
    max_samples: int = 128
    max_float_nodes: int = 32
    sensitivity: str = "accuracy"
    # 7-bit weights where 8-bit would saturate (x86 without VNNI); None: the target's ISA decides
    reduce_range: bool | None = None


@dataclass(frozen=True)
class _Trial:
    """One quantized model: the nodes it kept in float, its top-1 and logits MSE vs float."""

    excluded: frozenset[str]
    path: Path
    accuracy: float
    mse: float


class _Evaluator:
    """Runs the labelled set through ORT CPU sessions (the onnxruntime backend's, so a model
    ORT cannot load or run raises crossinfer's CompileError or InferenceError); quantizes with
    given nodes excluded."""

    def __init__(
        self,
        source: Path,
        samples: tuple[Mapping[str, np.ndarray], ...],
        dataset: LabelledSet,
        method: str,
        tmp: Path,
        artifact: ModelArtifact,
        reduce_range: bool,
    ) -> None:
        self._reduce_range = reduce_range
        self._source = source
        self._samples = samples
        self._dataset = dataset
        self._method = method
        self._tmp = tmp
        self._artifact = artifact
        self._cache: dict[frozenset[str], _Trial] = {}
        self.float_logits = self.logits(artifact)
        self.float_accuracy = self.top1(self.float_logits)

    @property
    def attempts(self) -> int:
        return len(self._cache)

    def logits(self, model: ModelArtifact) -> np.ndarray:
        backend = get_backend("onnxruntime")
        session = backend.prepare(model, "cpu", SessionOptions(precision=Precision.FP32))
        try:
            outputs = session.run(dict(self._dataset.inputs))
        finally:
            session.close()
        return np.asarray(first_output(outputs), dtype=np.float64)

    def top1(self, logits: np.ndarray) -> float:
        return top1(logits, self._dataset.labels)

    def trial(self, excluded: frozenset[str]) -> _Trial:
        """Quantize with `excluded` kept in float (once per set) and measure it."""
        cached = self._cache.get(excluded)
        if cached is not None:
            return cached
        out = self._tmp / f"attempt-{len(self._cache)}.onnx"
        quantize_qdq(
            self._source,
            out,
            self._samples,
            method=self._method,
            per_channel=True,
            reduce_range=self._reduce_range,
            model_name=self._artifact.source,
            nodes_to_exclude=sorted(excluded),
        )
        logits = self.logits(load_model(out))
        result = _Trial(
            excluded=excluded,
            path=out,
            accuracy=self.top1(logits),
            mse=float(np.mean((logits - self.float_logits) ** 2)),
        )
        self._cache[excluded] = result
        return result


class Int8AccuracyAwarePass:
    """Static QDQ INT8, then nodes kept in float, most sensitive first, until top-1 is in budget."""

    name = "int8-accuracy-aware"
    config_type = AccuracyAwareConfig
    targets = ("onnxruntime",)

    def apply(
        self,
        artifact: ModelArtifact,
        config: AccuracyAwareConfig,
        out_path: Path,
        context: PassContext,
    ) -> Path:
        if config.method not in METHODS:
            raise UsageError(
                f"calibration method '{config.method}' is unknown: choose from {', '.join(METHODS)}"
            )
        if config.sensitivity not in SENSITIVITIES:
            raise UsageError(
                f"sensitivity '{config.sensitivity}' is unknown: choose from "
                f"{', '.join(SENSITIVITIES)}"
            )
        if config.max_samples < 1:
            raise UsageError(f"max_samples must be at least 1, got {config.max_samples}")
        if config.max_float_nodes < 0:
            raise UsageError(f"max_float_nodes must be at least 0, got {config.max_float_nodes}")
        dataset = context.dataset
        if dataset is None:
            raise InputError(
                f"int8-accuracy-aware needs a labelled data set for {artifact.source} to keep "
                "top-1 accuracy within budget: pass --dataset FILE.npz (inputs and labels), or "
                "use a zoo model with a data set (zoo:digits)"
            )
        calibration = context.calibration
        if calibration is None or len(calibration) == 0:
            raise InputError(
                f"int8-accuracy-aware needs calibration data for {artifact.source}: pass "
                "--calibration FILE.npz (or a folder of .npz files), or use a zoo model with a "
                "data set (zoo:digits)"
            )
        samples = calibration.samples[: config.max_samples]
        budget = context.max_accuracy_drop
        recipe = int8_recipe(context.target)
        reduce_range = recipe.reduce_range if config.reduce_range is None else config.reduce_range
        with scratch_dir(context, "int8-accuracy-aware-") as tmp:
            source, pre_note = pre_process(artifact, tmp)
            evaluator = _Evaluator(
                source, samples, dataset, config.method, tmp, artifact, reduce_range
            )
            full = evaluator.trial(frozenset())
            ranking: list[dict[str, Any]] = []
            kept: list[dict[str, Any]] = []
            best = full
            if evaluator.float_accuracy - full.accuracy > budget and config.max_float_nodes > 0:
                nodes = _quantizable_nodes(onnx.load(str(source), load_external_data=False))
                ranking = _rank(evaluator, full, nodes, config.sensitivity)
                best, kept = _exclude_greedily(evaluator, full, ranking, budget, config)
            model = onnx.load(str(best.path))
            attempts = evaluator.attempts
        finish_model(model, artifact, out_path)
        float_accuracy = evaluator.float_accuracy
        write_provenance(
            out_path,
            parent=artifact,
            pass_name=self.name,
            config=config,
            tools=tool_versions("onnxruntime"),
            extra={
                "calibration": calibration.source,
                "calibration_synthetic": calibration.synthetic,
                "calibration_samples": len(samples),
                "dataset": dataset.description,
                "pre_process": pre_note,
                "format": "QDQ, activations QUInt8, weights QInt8"
                + (" (7-bit range)" if reduce_range else ""),
                "recipe": recipe_record(
                    recipe, reduce_range=reduce_range, chosen=config.reduce_range
                ),
                "max_accuracy_drop": budget,
                "float_accuracy": float_accuracy,
                "full_int8_accuracy": full.accuracy,
                "final_accuracy": best.accuracy,
                "final_accuracy_drop": float_accuracy - best.accuracy,
                "budget_met": float_accuracy - best.accuracy <= budget,
                "float_nodes": kept,
                "sensitivity_ranking": ranking,
                "quantize_attempts": attempts,
                **quantization_counts(model),
            },
        )
        return out_path


def _quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv, MatMul and Gemm nodes, in graph order (nameless ones cannot be excluded)."""
    return [node.name for node in model.graph.node if node.op_type in QUANTIZABLE_OPS and node.name]


def _rank(
    evaluator: _Evaluator, full: _Trial, nodes: Sequence[str], sensitivity: str
) -> list[dict[str, Any]]:
    """Each node's sensitivity (what keeping it alone in float recovers), most sensitive first."""
    ranking: list[dict[str, Any]] = []
    for node in nodes:
        alone = evaluator.trial(frozenset({node}))
        if sensitivity == "accuracy":
            figure = round((alone.accuracy - full.accuracy) * 100, 4)
            reason = f"kept float: accuracy drop {figure:.2f} points when quantized"
        else:
            figure = full.mse - alone.mse
            reason = f"kept float: output MSE {figure:.4g} higher when quantized"
        ranking.append({"node": node, "sensitivity": figure, "reason": reason})
    # Stable: equally sensitive nodes keep graph order.
    ranking.sort(key=lambda entry: -float(entry["sensitivity"]))
    return ranking


def _exclude_greedily(
    evaluator: _Evaluator,
    full: _Trial,
    ranking: Sequence[Mapping[str, Any]],
    budget: float,
    config: AccuracyAwareConfig,
) -> tuple[_Trial, list[dict[str, Any]]]:
    """Keep nodes in float, most sensitive first, until in budget or `max_float_nodes` is hit.

    Returns the model that met the budget, else the most accurate one tried (fewest float nodes
    among equals), and the float nodes of that model with their sensitivity and reason.
    """
    best = full
    excluded: list[str] = []
    for entry in ranking[: config.max_float_nodes]:
        excluded.append(str(entry["node"]))
        current = evaluator.trial(frozenset(excluded))
        if current.accuracy > best.accuracy:
            best = current
        if evaluator.float_accuracy - current.accuracy <= budget:
            best = current
            break
    kept = [dict(entry) for entry in ranking if entry["node"] in best.excluded]
    return best, kept
