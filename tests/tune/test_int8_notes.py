"""Tune's notes say why INT8 is (or is not) fast on each CPU target it tried INT8 on."""

from __future__ import annotations

from pathlib import Path

from crossinfer.backends.base import Precision, Target
from crossinfer.hardware.int8 import int8_recipe
from crossinfer.tune.runner import _int8_notes
from crossinfer.tune.space import Variant


def _variant(target: str, recipe: str) -> Variant:
    return Variant(
        target=Target.parse(target),
        recipe=recipe,
        precision=Precision.FP32,
        model_path=Path("model.onnx"),
        model_sha256="0" * 64,
    )


def test_int8_notes_name_each_int8_target_once() -> None:
    variants = [
        _variant("onnxruntime:cpu", "fp32"),
        _variant("onnxruntime:cpu", "int8"),
        _variant("openvino:cpu", "int8-accuracy-aware"),
        _variant("openvino:cpu", "int8"),
        _variant("openvino:cpu", "bf16"),
    ]
    notes = _int8_notes(variants)
    assert notes == (
        int8_recipe("onnxruntime:cpu").headline(),
        int8_recipe("openvino:cpu").headline(),
    )
    assert all(note.startswith("INT8 on ") for note in notes)
    assert _int8_notes([_variant("onnxruntime:cpu", "fp32")]) == ()
