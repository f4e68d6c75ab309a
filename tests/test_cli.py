"""The command line as a user drives it: exit codes, JSON, and one clear line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from crossinfer.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["inspect", "doctor", "check", "demo"])
def test_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_inspect_json(linear_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(linear_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}]
    assert data["parameter_count"] == 36 and data["op_histogram"]["MatMul"] == 1
    assert data["opsets"] == {"": 17} and len(data["sha256"]) == 64


def test_inspect_table_for_a_zoo_model() -> None:
    result = runner.invoke(app, ["inspect", "zoo:digits"])
    assert result.exit_code == 0, result.output
    assert "pixels" in result.stdout and "parameters" in result.stdout and "Gemm" in result.stdout
    assert "[batch,64]" in result.stdout and "[batch,10]" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "is empty (0 bytes)"),
        (b"definitely not protobuf \xff\xfe", "is not a readable ONNX model"),
    ],
    ids=["missing", "empty", "garbage"],
)
def test_inspect_bad_file_is_one_line_not_a_traceback(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert message in result.stderr and "bad.onnx" in result.stderr
    assert "Traceback" not in result.output


def test_unknown_zoo_name() -> None:
    result = runner.invoke(app, ["inspect", "zoo:resnet51"])
    assert result.exit_code == 2
    assert "resnet51" in result.stderr and "resnet50" in result.stderr


def test_check_json_and_require(linear_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "check",
            str(linear_path),
            "-t",
            "onnxruntime:cpu",
            "--require",
            "onnxruntime:cpu",
            "--json",
            "--batch",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {row["target"]: row for row in data["rows"]}
    assert set(rows) == {"reference:cpu", "onnxruntime:cpu"}
    assert rows["onnxruntime:cpu"]["verdict"] == "pass"
    # after ORT's fusions (MatMul+Add) the node count is lower than the file's 3
    assert set(rows["onnxruntime:cpu"]["placement"]["devices"]) == {"CPUExecutionProvider"}
    assert rows["onnxruntime:cpu"]["placement"]["fallback_count"] == 0
    assert rows["onnxruntime:cpu"]["outputs"][0]["max_abs_error"] < 1e-5
    assert data["inputs"]["x"] == {"shape": [3, 8], "dtype": "float32"}


def _unavailable_onnxruntime_device() -> tuple[str, str]:
    """A device this machine's onnxruntime reports unavailable (CUDA where there is no
    onnxruntime-gpu), and the provider its reason names; skips where every one is available."""
    from crossinfer.backends.base import backend_entry, load_backend

    for device in load_backend(backend_entry("onnxruntime")).devices():
        if not device.available:
            return device.name, device.description
    pytest.skip("every onnxruntime device is available on this machine: none to fail on")


@pytest.mark.parametrize("kind", ["unavailable here", "unknown"])
def test_check_required_target_that_fails_exits_1(linear_path: Path, kind: str) -> None:
    # derived from this machine's discovery: a fixed 'onnxruntime:cuda' passes where a GPU is
    if kind == "unknown":
        device, named = "no-such-device", "onnxruntime knows no device 'no-such-device'"
    else:
        device, named = _unavailable_onnxruntime_device()
    target = f"onnxruntime:{device}"
    result = runner.invoke(app, ["check", str(linear_path), "-t", target, "--require", target])
    assert result.exit_code == 1, result.output
    assert f"required target(s) did not pass: {target}" in result.stderr
    assert named in result.stdout


def test_check_with_inputs_file(linear_path: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((5, 8), np.float32))
    result = runner.invoke(
        app, ["check", str(linear_path), "-t", "onnxruntime:cpu", "--inputs", str(good), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"]["x"]["shape"] == [5, 8]

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((5, 7), np.float32))
    result = runner.invoke(app, ["check", str(linear_path), "--inputs", str(bad)])
    assert result.exit_code == 2
    assert "input 'x' expects shape [batch,8] (float32), got [5, 7]" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "fp64"], "--precision 'fp64' is not one of fp32"),
        (["--dim", "seq"], "--dim 'seq' is not NAME=SIZE"),
        (["-t", ":cpu"], "has no backend"),
    ],
)
def test_check_bad_options(linear_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["check", str(linear_path), *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_doctor_json() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["cpu"]["logical_cores"] >= 1
    assert {r["name"] for r in data["runtimes"]} >= {
        "onnxruntime",
        "openvino",
        "torch",
        "jax",
        "iree",
    }


def test_demo_runs_discover_and_check(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["demo", "--model", "zoo:mlp", "--out", str(tmp_path), "--backends", "onnxruntime"],
    )
    assert result.exit_code == 0, result.output
    assert "discover" in result.stdout and "check" in result.stdout
    assert "onnxruntime:cpu" in result.stdout and "pass" in result.stdout
    # and on through optimize and tune to a report and a spec to serve
    assert (tmp_path / "report.html").is_file() and (tmp_path / "mlp.deploy.toml").is_file()
    assert "crossinfer serve" in " ".join(result.stdout.split())


def test_bench_option_reaches_the_backend_and_the_stored_settings(tmp_path: Path) -> None:
    store = tmp_path / "results.sqlite"
    base = ["bench", "zoo:mlp", "-b", "torch:cpu", "--quick", "--store", str(store), "--json"]
    result = runner.invoke(app, [*base, "--option", "mode=eager", "-O", "channels_last=0"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert rows and rows[0]["settings"]["options"] == {"mode": "eager", "channels_last": "0"}


def test_bench_option_errors_name_the_key() -> None:
    result = runner.invoke(app, ["bench", "zoo:mlp", "--option", "mode"])
    assert result.exit_code != 0
    assert "--option 'mode' is not KEY=VALUE" in result.output
    result = runner.invoke(
        app, ["bench", "zoo:mlp", "-b", "torch:cpu", "--quick", "--no-store", "-O", "moed=compile"]
    )
    assert result.exit_code != 0
    assert "torch does not know option(s) moed" in result.output
