"""`crossinfer tune` and `crossinfer report` refuse bad input with one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossinfer.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "cost"], "the price of this machine is unknown"),
        (["--objective", "speed"], "--objective 'speed' is not one of"),
        (["--backends", "tensorflow"], "unknown backend 'tensorflow'"),
        (["--strategy", "random"], "--strategy 'random'"),
        (["--instance", "x9.huge"], "instance 'x9.huge' is not in the hardware catalog"),
        (["--precisions", "fp8"], "unknown fp8"),
        (["--max-accuracy-drop", "2"], "fraction"),
        (["--batch", "0"], "--batch '0'"),
        (["--turn-rounds", "-1"], "--turn-rounds -1: give 0"),
        # filters apply before any check: nothing on a CPU-only ORT is a cuda device
        (
            ["--backends", "onnxruntime", "--device", "cuda"],
            "no target found here is kept by --backends onnxruntime --device cuda",
        ),
    ],
)
def test_bad_tune_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["tune", "zoo:mlp", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_report_of_a_file_that_is_not_a_tune_result(tmp_path: Path) -> None:
    path = tmp_path / "tune.json"
    path.write_text('{"results": []}')
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2
    assert "not a tune result" in result.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "not a readable tune result" in missing.output


@pytest.mark.parametrize("command", ["tune", "report", "demo"])
def test_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_turn_rounds_reach_the_tune_config() -> None:
    from crossinfer.tune.config import tune_config

    assert tune_config().turn_rounds == 2
    assert tune_config(turn_rounds=0).turn_rounds == 0  # each finalist measured once more
    assert tune_config(turn_rounds=4).turn_rounds == 4
