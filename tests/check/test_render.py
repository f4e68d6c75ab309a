"""check's table at 80 columns: verdicts and targets whole, the reference starred where it served."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from crossinfer.backends.base import Precision
from crossinfer.check import CheckReport, CheckRow, Verdict, default_tolerance
from crossinfer.check.render import render_check
from crossinfer.model import load_model


def test_the_table_fits_80_columns_without_cutting_a_verdict(linear_path: Path) -> None:
    placement = {
        "devices": {"CPUExecutionProvider": 12, "CUDAExecutionProvider": 230},
        "fallback_count": 12,
        "primary": "CUDAExecutionProvider",
    }
    rows = (
        CheckRow("reference:cpu", Verdict.ERROR, "failed at node 'g' (GatherElements): ..."),
        CheckRow("onnxruntime:cpu", Verdict.PASS, "the reference", is_reference=True),
        CheckRow("openvino:gpu.0", Verdict.UNSUPPORTED, "op type(s) Foo", load_s=1.25),
        CheckRow("onnxruntime:cuda", Verdict.MISMATCH, "y: 3 values beyond", placement=placement),
    )
    report = CheckReport(
        model=load_model(linear_path),
        reference="onnxruntime:cpu",
        requested_reference="reference:cpu",
        precision=Precision.FP32,
        tolerance=default_tolerance(Precision.FP32),
        inputs={"x": ([1, 8], "float32")},
        input_source="random, seed 0",
        rows=rows,
    )
    console = Console(record=True, width=80)
    render_check(report, console)
    lines = console.export_text().splitlines()
    table = [line for line in lines if line.startswith(" ") and ":" in line][:4]
    assert all(len(line) <= 80 for line in lines)
    assert not any("…" in line for line in lines)
    assert any("unsupported" in line for line in table)
    assert any("numerical mismatch" in line for line in table)
    assert any(line.split()[0] == "onnxruntime:cpu*" for line in table)
    assert not any(line.split()[0] == "reference:cpu*" for line in table)
