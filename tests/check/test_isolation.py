"""check on backends that misbehave: a crash, a hang, an exit and a drift each become a row."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

import fake_backends
from crossinfer.backends.base import Target, register_backend, unregister_backend
from crossinfer.check import Verdict, check_model, random_inputs
from crossinfer.model import load_model

FAKES = [
    fake_backends.DriftingBackend,
    fake_backends.SegfaultBackend,
    fake_backends.HangingBackend,
    fake_backends.ExitingBackend,
]


@pytest.fixture
def fakes() -> Iterator[None]:
    for cls in FAKES:
        register_backend(fake_backends.entry(cls))
    yield
    for cls in FAKES:
        unregister_backend(cls.name)


def test_misbehaving_backends_become_rows_and_the_check_completes(
    linear_path: Path, fakes: None
) -> None:
    artifact = load_model(linear_path)
    targets = [
        Target(name, "cpu")
        for name in ("segfault", "hanging", "exiting", "drifting", "onnxruntime")
    ]
    report = check_model(
        artifact,
        targets=targets,
        feeds=random_inputs(artifact.inputs, batch=2),
        timeout_s=20,
    )
    rows = {row.target: row for row in report.rows}
    assert rows["reference:cpu"].verdict == Verdict.PASS
    crashed = rows["segfault:cpu"]
    assert crashed.verdict == Verdict.CRASHED
    assert "SIGSEGV" in crashed.reason
    assert "about to dereference NULL" in crashed.stderr_tail
    assert rows["hanging:cpu"].verdict == Verdict.TIMEOUT
    assert "no result after 20 s" in rows["hanging:cpu"].reason
    assert rows["exiting:cpu"].verdict == Verdict.CRASHED
    assert "exited with code 3" in rows["exiting:cpu"].reason
    drift = rows["drifting:cpu"]
    assert drift.verdict == Verdict.MISMATCH
    assert "values beyond" in drift.reason
    # the rows after the crash and the hang still ran on a real runtime
    assert rows["onnxruntime:cpu"].verdict == Verdict.PASS
    assert report.failed(["onnxruntime:cpu"]) == []
    assert report.failed(["segfault:cpu", "onnxruntime:cpu"]) == ["segfault:cpu"]


def test_unknown_backend_is_an_unavailable_row(linear_path: Path) -> None:
    artifact = load_model(linear_path)
    report = check_model(
        artifact, targets=[Target("tvm", "cpu")], feeds=random_inputs(artifact.inputs)
    )
    row = report.row("tvm:cpu")
    assert row.verdict == Verdict.UNAVAILABLE and "unknown backend 'tvm'" in row.reason


def test_missing_device_is_an_unavailable_row(linear_path: Path) -> None:
    artifact = load_model(linear_path)
    report = check_model(
        artifact,
        targets=[Target("onnxruntime", "cuda"), Target("openvino", "npu")],
        feeds=random_inputs(artifact.inputs),
    )
    cuda = report.row("onnxruntime:cuda")
    assert cuda.verdict == Verdict.UNSUPPORTED
    assert (
        "CUDAExecutionProvider is not in this onnxruntime build: pip install onnxruntime-gpu"
        in cuda.reason
    )
    npu = report.row("openvino:npu")
    if importlib.util.find_spec("openvino") is None:  # the core install, without the extra
        assert npu.verdict == Verdict.UNAVAILABLE
        assert "pip install 'crossinfer[openvino]'" in npu.reason
    else:
        assert npu.verdict == Verdict.UNSUPPORTED
        assert "OpenVINO device NPU is not available here" in npu.reason
