"""A reference that fails does not leave `check` blind: the node is named, a trusted runtime
stands in and is the one starred, and with no reference at all the command exits non-zero."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import fake_backends
from conftest import make_model
from crossinfer.backends.base import Target, register_backend, unregister_backend
from crossinfer.check import Verdict, check_model
from crossinfer.check import runner as check_runner
from crossinfer.cli import app
from crossinfer.model import load_model


@pytest.fixture
def gather_path(tmp_path: Path) -> Path:
    """GatherElements over a (1, 128) table: onnx's evaluator fails on it (np.choose takes at most
    32 choices, and its 2-D fallback reshapes one value into (1, 16)), as on exported BERTs'
    position ids; ONNX Runtime runs it."""
    table = numpy_helper.from_array(np.arange(128, dtype=np.float32).reshape(1, 128), "table")
    model = make_model(
        [
            helper.make_node(
                "GatherElements", ["table", "ids"], ["g"], axis=1, name="gather_positions"
            ),
            helper.make_node("Relu", ["g"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [table],
    )
    path = tmp_path / "gather.onnx"
    onnx.save(model, path)
    return path


def test_a_failing_reference_names_the_node_and_onnxruntime_stands_in(gather_path: Path) -> None:
    artifact = load_model(gather_path)
    feeds = {"ids": np.arange(16, dtype=np.int64).reshape(1, 16) * 3}
    report = check_model(artifact, targets=[Target("onnxruntime", "cpu")], feeds=feeds)
    failed = report.row("reference:cpu")
    assert failed.verdict is Verdict.ERROR and not failed.is_reference
    assert "node 'gather_positions' (GatherElements)" in failed.reason
    assert "cannot reshape array of size 1 into shape (1,16)" in failed.reason
    assert "falling back to onnxruntime:cpu as the reference" in failed.reason
    ort = report.row("onnxruntime:cpu")
    assert ort.is_reference and ort.verdict is Verdict.PASS
    assert "instead of reference:cpu" in ort.reason
    assert report.reference == "onnxruntime:cpu" and report.requested_reference == "reference:cpu"
    assert report.judged
    assert [r.target for r in report.rows] == ["reference:cpu", "onnxruntime:cpu"]  # ORT once


def test_cli_stars_the_runtime_that_was_the_reference(gather_path: Path) -> None:
    result = CliRunner().invoke(app, ["check", str(gather_path), "-t", "onnxruntime:cpu"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime:cpu*" in result.stdout and "reference:cpu*" not in result.stdout
    text = " ".join(result.stdout.split())  # the console wraps at 80 columns
    assert "reference: onnxruntime:cpu (fallback: reference:cpu failed)" in text
    # asked for by name, ORT is the reference and the evaluator is not run at all
    result = CliRunner().invoke(
        app,
        ["check", str(gather_path), "-t", "onnxruntime:cpu", "--reference", "onnxruntime:cpu"],
    )
    assert result.exit_code == 0, result.output
    assert "onnxruntime:cpu*" in result.stdout and "reference:cpu" not in result.stdout


@pytest.fixture
def crashing_references(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every trusted reference crashes; 'drifting' is the only candidate."""
    fakes = [fake_backends.SegfaultBackend, fake_backends.ExitingBackend]
    fakes.append(fake_backends.DriftingBackend)
    for cls in fakes:
        register_backend(fake_backends.entry(cls))
    monkeypatch.setattr(check_runner, "TRUSTED_REFERENCES", ("segfault:cpu",))
    yield
    for cls in fakes:
        unregister_backend(cls.name)


def test_no_reference_at_all_leaves_rows_unjudged_and_exits_1(
    linear_path: Path, crashing_references: None
) -> None:
    # one run, through the CLI: each crashing child costs seconds
    result = CliRunner().invoke(
        app,
        ["check", str(linear_path), "-t", "drifting:cpu", "--reference", "exiting:cpu", "--json"],
    )
    assert result.exit_code == 1, result.output
    assert "no row could be judged" in result.stderr
    report = json.loads(result.stdout)
    assert report["reference"] is None and report["requested_reference"] == "exiting:cpu"
    rows = {r["target"]: r for r in report["rows"]}
    assert list(rows) == ["exiting:cpu", "segfault:cpu", "drifting:cpu"]
    assert not any(r["is_reference"] for r in rows.values())
    assert "falling back to segfault:cpu" in rows["exiting:cpu"]["reason"]
    assert "no trusted runtime is left" in rows["segfault:cpu"]["reason"]
    assert rows["drifting:cpu"]["verdict"] == Verdict.NO_REFERENCE.value
    assert (
        "exiting:cpu nor segfault:cpu produced reference outputs" in rows["drifting:cpu"]["reason"]
    )
