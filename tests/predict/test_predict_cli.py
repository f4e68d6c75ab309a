"""`crossinfer predict` on a real zoo model: JSON rows marked predicted, and a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossinfer.cli import app

runner = CliRunner()


def test_predict_json_on_a_zoo_model(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "predict",
            "zoo:mobilenetv2",
            "--hardware",
            "h100,c7a.large,ethos-u",
            "--store",
            str(tmp_path / "none.sqlite"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["cost"]["macs"] == pytest.approx(0.30e9, rel=0.01)
    rows = {(r["hardware"], r["precision"]): r for r in data["predictions"]}
    assert set(rows) == {
        ("NVIDIA H100 SXM", "fp32"),
        ("NVIDIA H100 SXM", "fp16"),
        ("NVIDIA H100 SXM", "int8"),
        ("c7a.large", "fp32"),
        ("c7a.large", "bf16"),
        ("c7a.large", "int8"),
        ("Arm Ethos-U65 (512 MAC/cycle, 1 GHz)", "int8"),
    }
    for row in rows.values():
        assert row["predicted"] is True
        assert row["batch1_latency_ms"] > 0 and row["best_throughput"] > 0
        assert row["error"] == "uncalibrated"
    # a CPU instance is priced; an Ethos-U has no cloud price
    assert rows[("c7a.large", "fp32")]["cost_per_million"] > 0
    assert rows[("Arm Ethos-U65 (512 MAC/cycle, 1 GHz)", "int8")]["cost_per_million"] is None
    # an H100 is faster than two Zen 4 cores at FP32
    h100 = rows[("NVIDIA H100 SXM", "fp32")]["best_throughput"]
    assert h100 > 10 * rows[("c7a.large", "fp32")]["best_throughput"]


def test_predict_names_an_unknown_device(linear_path: Path) -> None:
    args = ["predict", str(linear_path), "--hardware", "tpu v9", "--no-calibrate"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "--hardware 'tpu v9' matches no device" in result.output
