"""The optimize pipeline on real onnxruntime: each step re-proved, regressions caught and dropped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from crossinfer.backends.base import Precision, Target
from crossinfer.cli import app
from crossinfer.errors import UsageError
from crossinfer.model import load_model
from crossinfer.passes import pipeline
from crossinfer.passes.base import LabelledSet, read_provenance
from crossinfer.passes.pipeline import optimize, preset
from crossinfer.turns import TurnsComparison
from crossinfer.zoo import zoo_dataset

runner = CliRunner()


# the fake runtime's cost model: this many samples/s, divided by 1 + each MatMul that
# SlowdownPass adds (the real measurement still runs, for outputs and accuracy)
FAKE_THROUGHPUT = 1000.0


def _fake_throughput(artifact: Any) -> float:
    nodes = load_model(str(artifact.path)).load_proto().graph.node
    added = sum(1 for n in nodes if n.name.startswith("slow_mm_"))
    return FAKE_THROUGHPUT / (1 + added)


def _controlled_speed(real: Any) -> Any:
    def measure(entry: Any, artifact: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any, Any]:
        measured, outputs, speed = real(entry, artifact, *args, **kwargs)
        throughput = _fake_throughput(artifact)
        if speed is not None:  # the rounds in turns, as the cost model says they went
            base = _fake_throughput(kwargs["against"][0])
            speed = TurnsComparison((base,) * 3, (throughput,) * 3, (1.0, 1.0, 1.0))
        return dataclasses.replace(measured, throughput=throughput), outputs, speed

    return measure


@pytest.fixture
def fake_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake passes, measured with a controlled speed: whether a pass is judged a regression
    must not depend on how loaded the machine is while a unit test runs."""
    monkeypatch.setitem(
        pipeline.PASSES, "slowdown", ("fake_passes", "SlowdownPass", Precision.FP32)
    )
    monkeypatch.setitem(pipeline.PASSES, "noise", ("fake_passes", "NoisePass", Precision.FP32))
    monkeypatch.setattr(pipeline, "_measure", _controlled_speed(pipeline._measure))


def _digits_set() -> LabelledSet:
    data = zoo_dataset("zoo:digits")
    assert data is not None
    return LabelledSet(data.inputs, data.labels, data.description)


def test_a_slower_pass_is_a_regression_and_is_dropped(tmp_path: Path, fake_passes: None) -> None:
    artifact = load_model("zoo:digits")
    report = optimize(
        artifact,
        target=Target("onnxruntime", "cpu"),
        passes=[("slowdown", None)],
        out_dir=tmp_path,
        dataset=_digits_set(),
        measure_seconds=0.4,
        measure_batch=64,
    )
    baseline, slow = report.steps
    assert baseline.measurement is not None and baseline.measurement.accuracy is not None
    assert baseline.measurement.accuracy > 0.9
    assert baseline.measurement.throughput == FAKE_THROUGHPUT
    assert slow.parity_passed  # same outputs: only the speed is worse
    assert slow.speedup == pytest.approx(1 / 25)  # 24 MatMuls added
    assert slow.regression and not slow.kept
    assert slow.speed is not None and slow.speed_verdict == "slower"
    assert slow.reasons[0].startswith(
        "0.04x the baseline's throughput on onnxruntime:cpu (rounds 0.04x-0.04x, 3 in turns, "
        "load 1.0): "
    )
    assert report.final.sha256 == artifact.sha256  # nothing kept: the original stays
    # ... and is still written as OUT/model.onnx, where a script looks for the final model
    assert report.final.path == tmp_path / "model.onnx" and report.final.path.exists()
    provenance = read_provenance(tmp_path / "01-slowdown.onnx")
    assert provenance is not None and provenance["parent"]["sha256"] == artifact.sha256


def test_a_pass_that_breaks_accuracy_is_flagged_and_kept_only_on_request(
    tmp_path: Path, fake_passes: None
) -> None:
    artifact = load_model("zoo:digits")
    report = optimize(
        artifact,
        target=Target("onnxruntime", "cpu"),
        passes=[("noise", None)],
        out_dir=tmp_path,
        dataset=_digits_set(),
        max_accuracy_drop=0.01,
        keep_regressions=True,
        measure_seconds=0.4,
    )
    noisy = report.steps[1]
    assert noisy.accuracy_drop is not None and noisy.accuracy_drop > 0.01
    assert not noisy.parity_passed
    assert any("top-1 accuracy drops" in r for r in noisy.reasons)
    assert any("parity at fp32 tolerance fails" in r for r in noisy.reasons)
    assert noisy.speedup == 1.0 and not any("throughput" in r for r in noisy.reasons)
    assert noisy.kept and report.final.path == tmp_path / "model.onnx"
    assert report.final.sha256 == noisy.artifact.sha256


def test_a_dropped_int8_model_says_where_it_diverged(
    tmp_path: Path, fake_passes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the noise pass labelled INT8: its parity fails at INT8 tolerance, so optimize bisects it
    monkeypatch.setitem(pipeline.PASSES, "noise", ("fake_passes", "NoisePass", Precision.INT8))
    artifact = load_model("zoo:digits")
    report = optimize(
        artifact,
        target=Target("onnxruntime", "cpu"),
        passes=[("noise", None)],
        out_dir=tmp_path,
        measure_seconds=0.2,
    )
    noisy = report.steps[1]
    assert not noisy.kept and not noisy.parity_passed
    assert noisy.divergence is not None
    # the noise is in fc1's weights (Constant and Mul before it are exact): the first Gemm
    assert noisy.divergence["node"] == "/fc1/Gemm" and noisy.divergence["op_type"] == "Gemm"
    assert any(r.startswith("first divergent node: '/fc1/Gemm' (Gemm, #2)") for r in noisy.reasons)
    repro = tmp_path / "01-noise-divergence"
    assert (repro / "model.onnx").exists() and (repro / "test_data_set_0" / "input_0.pb").exists()
    assert report.to_dict()["steps"][1]["divergence"]["repro_dir"] == str(repro)


def test_presets_and_unknown_names() -> None:
    assert preset(Target("onnxruntime", "cpu"), "int8") == (
        ("simplify", "int8-static"),
        Precision.FP32,
    )
    assert preset(Target("openvino", "cpu"), "bf16") == ((), Precision.BF16)
    with pytest.raises(
        UsageError, match=r"--precision bf16 has no recipe for onnxruntime.*openvino:cpu"
    ):
        preset(Target("onnxruntime", "cpu"), "bf16")
    with pytest.raises(UsageError, match="unknown pass 'magic'"):
        pipeline.get_pass("magic")


def test_a_bad_plan_is_refused_before_measuring(tmp_path: Path) -> None:
    artifact = load_model("zoo:digits")
    with pytest.raises(UsageError, match="unknown pass 'magic'"):
        optimize(
            artifact,
            target=Target("onnxruntime", "cpu"),
            passes=[("magic", None)],
            out_dir=tmp_path,
        )
    with pytest.raises(
        UsageError, match="pass 'int8-nncf' makes models for openvino, not onnxruntime"
    ):
        optimize(
            artifact,
            target=Target("onnxruntime", "cpu"),
            passes=[("int8-nncf", None)],
            out_dir=tmp_path,
        )
    assert not any(tmp_path.iterdir())


def test_openvino_bf16_runtime_step(tmp_path: Path) -> None:
    pytest.importorskip(
        "openvino", reason="openvino not installed: pip install 'crossinfer[openvino]'"
    )
    report = optimize(
        load_model("zoo:digits"),
        target=Target("openvino", "cpu"),
        passes=[],
        out_dir=tmp_path,
        runtime_precision=Precision.BF16,
        dataset=_digits_set(),
        measure_seconds=0.4,
    )
    step = report.steps[1]
    assert step.pass_name == "runtime-bf16" and step.precision is Precision.BF16
    assert step.measurement is not None and step.measurement.accuracy is not None


def test_cli_optimize_needs_a_plan_and_writes_a_report(tmp_path: Path, fake_passes: None) -> None:
    result = runner.invoke(app, ["optimize", "zoo:digits", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "say what to do" in result.stderr
    result = runner.invoke(
        app,
        [
            "optimize",
            "zoo:digits",
            "--passes",
            "slowdown",
            "--seconds",
            "0.4",
            "--batch",
            "64",
            "-o",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output  # the regression was dropped, not kept
    data = json.loads(result.stdout)
    assert [s["pass"] for s in data["steps"]] == ["baseline", "slowdown"]
    assert json.loads((tmp_path / "report.json").read_text())["steps"][1]["kept"] is False


def test_cli_optimize_json_is_clean_with_nncf_progress(tmp_path: Path) -> None:
    pytest.importorskip("nncf", reason="nncf not installed: pip install 'crossinfer[openvino]'")
    result = runner.invoke(
        app,
        [
            "optimize",
            "zoo:digits",
            "-t",
            "openvino:cpu",
            "--precision",
            "int8",
            "--seconds",
            "0.4",
            "-o",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)  # NNCF's progress bars went to stderr
    assert [s["pass"] for s in data["steps"]] == ["baseline", "int8-nncf"]
    assert (
        data["steps"][1]["measurement"]["accuracy"]
        >= data["steps"][0]["measurement"]["accuracy"] - 0.01
    )


def test_cli_accuracy_aware_int8_on_digits(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "optimize",
            "zoo:digits",
            "--precision",
            "int8-accuracy-aware",
            "--seconds",
            "0.4",
            "-o",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)["steps"]
    assert [s["pass"] for s in steps] == ["baseline", "simplify", "int8-accuracy-aware"]
    quantized = steps[2]
    assert quantized["error"] == "" and quantized["precision"] == "int8"
    assert quantized["accuracy_drop"] is not None and quantized["accuracy_drop"] <= 0.01
    provenance = read_provenance(tmp_path / "02-int8-accuracy-aware.onnx")
    assert provenance is not None and provenance["budget_met"] is True


def test_cli_dataset_file_and_its_errors(tmp_path: Path) -> None:
    data = zoo_dataset("zoo:digits")
    assert data is not None
    good = tmp_path / "val.npz"
    np.savez(good, pixels=data.inputs["pixels"][:100], labels=data.labels[:100])
    result = runner.invoke(
        app,
        [
            "optimize",
            "zoo:digits",
            "--passes",
            "simplify",
            "--dataset",
            str(good),
            "--seconds",
            "0.4",
            "-o",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"].endswith("(100 labelled samples)")
    assert report["steps"][0]["measurement"]["accuracy"] > 0.9

    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, pixels=data.inputs["pixels"][:10])
    result = runner.invoke(
        app, ["optimize", "zoo:digits", "--passes", "simplify", "--dataset", str(unlabelled)]
    )
    assert result.exit_code == 2 and "has no 'labels' array" in result.stderr

    short = tmp_path / "short.npz"
    np.savez(short, pixels=data.inputs["pixels"][:10], labels=data.labels[:9])
    result = runner.invoke(
        app, ["optimize", "zoo:digits", "--passes", "simplify", "--dataset", str(short)]
    )
    assert result.exit_code == 2 and "has 9 labels but input rows" in result.stderr
