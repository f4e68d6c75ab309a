"""The `int8-accuracy-aware` pass on zoo:digits: full INT8 when in budget, float nodes when not.

Calibrating on a single sample gives bad ranges, so full INT8 loses accuracy honestly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossinfer.errors import InputError
from crossinfer.model import ModelArtifact, load_model
from crossinfer.passes.base import LabelledSet, PassContext, read_provenance
from crossinfer.passes.calibration import load_calibration
from crossinfer.passes.int8_accuracy_aware import AccuracyAwareConfig, Int8AccuracyAwarePass
from crossinfer.zoo import zoo_dataset


def _dataset() -> LabelledSet:
    data = zoo_dataset("zoo:digits")
    assert data is not None
    return LabelledSet(inputs=data.inputs, labels=data.labels, description=data.description)


def _top1(path: Path, dataset: LabelledSet) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, dict(dataset.inputs))[0]
    return float(np.mean(np.argmax(logits, axis=-1) == dataset.labels))


def _apply(
    config: AccuracyAwareConfig, budget: float, tmp: Path
) -> tuple[ModelArtifact, Path, dict[str, Any]]:
    parent = load_model("zoo:digits")
    context = PassContext(
        target="onnxruntime:cpu",
        calibration=load_calibration(None, parent),
        work_dir=tmp / "w",
        dataset=_dataset(),
        max_accuracy_drop=budget,
    )
    out = Int8AccuracyAwarePass().apply(parent, config, tmp / "aa.onnx", context)
    assert out == tmp / "aa.onnx"
    load_model(out)  # onnx checker and shape inference pass
    record = read_provenance(out)
    assert record is not None
    assert record["pass"] == "int8-accuracy-aware"
    assert record["parent"]["sha256"] == parent.sha256
    return parent, out, record


def test_generous_budget_keeps_everything_int8(tmp_path: Path) -> None:
    parent, out, record = _apply(AccuracyAwareConfig(), 0.05, tmp_path)
    dataset = _dataset()
    before, after = _top1(parent.path, dataset), _top1(out, dataset)
    print(f"ACCURACY zoo:digits int8-accuracy-aware budget 0.05: {before:.4f} -> {after:.4f}")
    assert record["float_nodes"] == []
    assert record["quantize_attempts"] == 1
    assert record["budget_met"] is True
    assert record["float_accuracy"] == pytest.approx(before)
    assert record["final_accuracy"] == pytest.approx(after)
    assert before - after <= 0.05
    assert record["quantized_nodes"] >= 2  # both Gemms


@pytest.mark.parametrize("sensitivity", ["accuracy", "output-mse"])
def test_tight_budget_keeps_sensitive_nodes_float(sensitivity: str, tmp_path: Path) -> None:
    # One calibration sample: its activation ranges clip other images, costing >2 points.
    config = AccuracyAwareConfig(max_samples=1, sensitivity=sensitivity)
    parent, out, record = _apply(config, 0.005, tmp_path)
    dataset = _dataset()
    before, after = _top1(parent.path, dataset), _top1(out, dataset)
    full = record["full_int8_accuracy"]
    assert isinstance(full, float)
    print(
        f"ACCURACY zoo:digits int8-accuracy-aware {sensitivity} budget 0.005: float {before:.4f}"
        f", full INT8 {full:.4f}, final {after:.4f}; float nodes {record['float_nodes']}"
    )
    assert before - full > 0.005  # the hard case is real: full INT8 is out of budget
    assert record["final_accuracy"] == pytest.approx(after)
    assert record["budget_met"] is (before - after <= 0.005)
    assert before - after <= 0.005 or record["budget_met"] is False
    float_nodes = record["float_nodes"]
    assert isinstance(float_nodes, list) and float_nodes
    for entry in float_nodes:
        assert entry["node"] in ("/fc1/Gemm", "/fc2/Gemm")
        assert entry["reason"].startswith("kept float: ")
        assert isinstance(entry["sensitivity"], float)
    ranking = record["sensitivity_ranking"]
    assert isinstance(ranking, list)
    figures = [entry["sensitivity"] for entry in ranking]
    assert figures == sorted(figures, reverse=True)
    assert {entry["node"] for entry in ranking} == {"/fc1/Gemm", "/fc2/Gemm"}
    attempts = record["quantize_attempts"]
    assert isinstance(attempts, int) and 1 + len(ranking) <= attempts <= 1 + 2 * len(ranking)
    assert after > full  # keeping nodes float recovered accuracy


def test_max_float_nodes_zero_reports_budget_not_met(tmp_path: Path) -> None:
    config = AccuracyAwareConfig(max_samples=1, max_float_nodes=0)
    _, _, record = _apply(config, 0.005, tmp_path)
    assert record["float_nodes"] == []
    assert record["budget_met"] is False
    assert record["final_accuracy"] == record["full_int8_accuracy"]


def test_without_dataset_says_what_to_pass(tmp_path: Path) -> None:
    parent = load_model("zoo:digits")
    context = PassContext(
        target="onnxruntime:cpu", calibration=load_calibration(None, parent), work_dir=tmp_path
    )
    with pytest.raises(InputError, match=r"pass --dataset .* use a zoo model with a data set"):
        Int8AccuracyAwarePass().apply(parent, AccuracyAwareConfig(), tmp_path / "x.onnx", context)
