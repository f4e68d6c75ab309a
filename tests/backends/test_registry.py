"""The backend registry: adding a runtime is one entry, and every command sees it from there."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

import fake_backends
from conftest import linear_model
from crossinfer.backends.base import (
    Precision,
    Target,
    backend_entries,
    find_backend_entry,
    register_backend,
    unregister_backend,
)
from crossinfer.bench.fingerprint import runtime_versions
from crossinfer.check.runner import default_targets
from crossinfer.cli import app
from crossinfer.hardware import known_runtimes
from crossinfer.model import load_model
from crossinfer.passes.pipeline import preset
from crossinfer.serve.repository import ServedModel, ServingConfig
from crossinfer.tune.space import Knobs, Variant, build_space, knob_grid


@pytest.fixture
def toy() -> Iterator[None]:
    register_backend(fake_backends.TOY_ENTRY)
    try:
        yield
    finally:
        unregister_backend("toy")


def test_a_registered_toy_backend_shows_in_doctor_check_tune_optimize_serve_and_fingerprint(
    toy: None, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    runtimes = {r["name"]: r for r in json.loads(result.stdout)["runtimes"]}
    assert runtimes["toy"] == {
        "name": "toy",
        "installed": True,
        "usable": True,
        "version": importlib.metadata.version("numpy"),
        "devices": ["cpu", "toy-accelerator"],
        "reason": None,
        "install_hint": "pip install toy-runtime",
        "notes": ["a toy runtime for tests"],
    }

    targets, _ = default_targets()
    assert Target("toy", "cpu") in targets

    assert knob_grid("toy", 4) == (Knobs(threads=4), Knobs(threads=1, instances=4))
    onnx.save(linear_model(), tmp_path / "m.onnx")
    variant = Variant(Target("toy", "cpu"), "fp32", Precision.FP32, tmp_path / "m.onnx", "0" * 64)
    space = build_space([variant], [1], batchable=True, cores=2)
    assert [c.knobs for c in space.candidates] == [
        Knobs(threads=2),
        Knobs(threads=1, instances=2),
    ]

    assert preset(Target("toy", "cpu"), "FP16") == (("simplify", "fp16"), Precision.FP32)

    served = ServedModel("m", load_model(tmp_path / "m.onnx"), ServingConfig(backend="toy"))
    assert served.platform == "toy_platform"

    assert runtime_versions()["toy"] == importlib.metadata.version("numpy")


def test_unregistering_removes_it_everywhere(toy: None) -> None:
    assert "toy" in known_runtimes()
    unregister_backend("toy")
    assert find_backend_entry("toy") is None
    assert "toy" not in known_runtimes()
    assert "toy" not in runtime_versions()
    assert knob_grid("toy", 4) == (Knobs(),)


def test_a_second_backend_under_a_taken_name_is_refused(toy: None) -> None:
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_backend(fake_backends.TOY_ENTRY)


def test_builtin_order_and_doctor_list() -> None:
    names = [entry.name for entry in backend_entries()]
    assert names[:6] == ["onnxruntime", "openvino", "torch", "jax", "iree", "reference"]
    # the reference backend runs on onnx, which doctor reports on its own
    assert known_runtimes()[:5] == ("onnxruntime", "openvino", "torch", "jax", "iree")
    assert "reference" not in known_runtimes()


def test_the_registry_imports_no_runtime() -> None:
    # A fresh interpreter: reading every entry (doctor's list, versions, grids, presets,
    # platforms) must not import a runtime, so a missing or broken one cannot break the others.
    code = (
        "import sys\n"
        "from crossinfer.backends.base import backend_entries\n"
        "from crossinfer.bench.fingerprint import runtime_versions\n"
        "for e in backend_entries():\n"
        "    e.installed_version(); e.platform; dict(e.presets)\n"
        "    e.knob_grid and e.knob_grid(4)\n"
        "    e.option_grid and e.option_grid('cuda', True)\n"
        "runtime_versions()\n"
        "loaded = {'onnxruntime', 'openvino', 'torch', 'jax', 'iree'} & set(sys.modules)\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
