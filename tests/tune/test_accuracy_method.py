"""The spec's accuracy_method says what optimize measured: top-1 with labels, else the parity."""

from __future__ import annotations

from pathlib import Path

from crossinfer.backends.base import Precision
from crossinfer.check.parity import OutputComparison
from crossinfer.model import load_model
from crossinfer.passes.pipeline import Measurement, StepReport
from crossinfer.tune.variants import _accuracy_method


def _step(linear_path: Path, *, drop: float | None, cosine: float) -> StepReport:
    compared = OutputComparison("y", True, "", (16, 4), 0.01, 0.02, cosine, 0, 64, 0.0)
    return StepReport(
        "int8-static",
        load_model(linear_path),
        Precision.INT8,
        Measurement(1.0, 10.0, 8, None),
        comparisons=(compared,),
        accuracy_drop=drop,
    )


def test_without_labels_it_names_the_parity_that_was_proved(linear_path: Path) -> None:
    method = _accuracy_method(_step(linear_path, drop=None, cosine=0.99712))
    assert method == (
        "outputs within int8 tolerance of the FP32 reference on 16 input(s) (lowest cosine "
        "0.9971); top-1 not measured: no labelled set"
    )


def test_with_labels_it_is_top1(linear_path: Path) -> None:
    method = _accuracy_method(_step(linear_path, drop=0.004, cosine=0.999))
    assert method == "top-1 on the labelled set, against the FP32 model on the same target"
