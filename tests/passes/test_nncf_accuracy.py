"""NNCF's accuracy control on OpenVINO: a calibration bad enough to lose accuracy gets repaired."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.errors import InputError
from crossinfer.model import load_model
from crossinfer.passes.base import CalibrationData, LabelledSet, PassContext, read_provenance
from crossinfer.passes.int8_nncf import Int8NncfPass, NncfInt8Config
from crossinfer.passes.int8_nncf_accuracy import Int8NncfAccuracyAwarePass
from crossinfer.zoo import zoo_dataset

pytest.importorskip("nncf", reason="nncf not installed: pip install 'crossinfer[openvino]'")


def _top1(path: Path, data: LabelledSet) -> float:
    session = get_backend("openvino").prepare(
        load_model(path), "cpu", SessionOptions(precision=Precision.FP32)
    )
    logits = session.run(dict(data.inputs))["logits"]
    session.close()
    return float(np.mean(np.argmax(logits, axis=-1) == data.labels))


def test_accuracy_control_keeps_the_drop_within_budget(tmp_path: Path) -> None:
    artifact = load_model("zoo:digits")
    raw = zoo_dataset("zoo:digits")
    assert raw is not None
    data = LabelledSet(raw.inputs, raw.labels, raw.description)
    x = raw.inputs["pixels"]
    # one image at half brightness: activation ranges too narrow, so plain INT8 loses accuracy
    # (NNCF logged 0.92-0.93 top-1 against 0.98 float) and the accuracy control must restore
    # float layers. The budget is 3 of the 150 images: INT8 kernels differ by CPU (an AVX2-only
    # EPYC has no VNNI and gets overflow_fix; there, fc2 alone quantized still loses 1 image,
    # so a budget under one image would leave no quantized layer on that CPU and pass on others)
    budget = 0.02
    calibration = CalibrationData(samples=({"pixels": x[:1] * 0.5},), source="one dim image")
    context = PassContext(
        target="openvino:cpu", calibration=calibration, dataset=data, max_accuracy_drop=budget
    )
    out = Int8NncfAccuracyAwarePass().apply(
        artifact, NncfInt8Config(subset_size=1), tmp_path / "q.onnx", context
    )
    float_top1 = _top1(artifact.path, data)
    int8_top1 = _top1(out, data)
    assert float_top1 - int8_top1 <= budget + 1e-9, (float_top1, int8_top1)
    provenance = read_provenance(out)
    assert provenance is not None
    control = provenance["accuracy_control"]
    assert control["max_drop"] == budget and control["budget_met"] is True
    assert control["float_accuracy"] - control["final_accuracy"] <= budget + 1e-9
    assert control["final_accuracy"] == pytest.approx(int8_top1)
    assert control["validation_runs"] > 3  # initial, quantized, then the restoring iterations
    # the plain INT8 model from the same calibration really was outside the budget, so the
    # accuracy control had something to restore
    plain = Int8NncfPass().apply(
        artifact, NncfInt8Config(subset_size=1), tmp_path / "plain.onnx", context
    )
    assert float_top1 - _top1(plain, data) > budget
    assert control["quantize_nodes_left"] >= 1  # not simply the float model handed back


def test_accuracy_control_needs_a_labelled_set(tmp_path: Path) -> None:
    artifact = load_model("zoo:digits")
    raw = zoo_dataset("zoo:digits")
    assert raw is not None
    calibration = CalibrationData(
        samples=({"pixels": raw.inputs["pixels"][:4]},), source="four images"
    )
    with pytest.raises(InputError, match="needs a labelled data set: pass --dataset"):
        Int8NncfAccuracyAwarePass().apply(
            artifact,
            NncfInt8Config(),
            tmp_path / "q.onnx",
            PassContext(target="openvino:cpu", calibration=calibration),
        )
