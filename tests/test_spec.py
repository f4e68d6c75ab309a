"""The deployment spec round-trips, and a spec that cannot be used is refused naming the key."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from crossinfer.backends.base import Precision, SessionOptions
from crossinfer.errors import SpecError
from crossinfer.model import load_model
from crossinfer.spec import BatchingSpec, DeploymentSpec, load_spec, write_spec
from crossinfer.zoo import zoo_model_path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    shutil.copy(zoo_model_path("mlp"), path)
    return path


def _spec(model: Path) -> DeploymentSpec:
    return DeploymentSpec(
        name="mlp",
        model=model,
        backend="onnxruntime",
        device="cpu",
        options=SessionOptions(
            precision=Precision.FP32,
            threads=2,
            graph_optimization_level="all",
            extra={"enable_mem_pattern": "0"},
        ),
        batching=BatchingSpec(
            max_batch_size=8, max_queue_delay_us=500, preferred_batch_sizes=(4, 8), instances=2
        ),
        model_sha256=load_model(model).sha256,
        recipe="fp32",
        measured={"throughput": 1234.5, "p99_ms": 0.8, "accuracy": None},
        source={"objective": "throughput", "constraints": {"max_p99_ms": 10.0}},
    )


def test_round_trip(model: Path, tmp_path: Path) -> None:
    spec = _spec(model)
    path = write_spec(spec, tmp_path / "mlp.toml")
    text = path.read_text()
    assert 'model = "mlp.onnx"' in text  # relative to the spec, so the folder can move
    loaded = load_spec(path)
    # None values are dropped (TOML has no null); everything else comes back as written
    assert loaded == DeploymentSpec(
        **{**spec.__dict__, "measured": {"throughput": 1234.5, "p99_ms": 0.8}}
    )
    assert str(loaded.target) == "onnxruntime:cpu" and loaded.precision is Precision.FP32


def test_the_folder_can_move(model: Path, tmp_path: Path) -> None:
    write_spec(_spec(model), tmp_path / "mlp.toml")
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.move(tmp_path, moved)
    assert load_spec(moved / "mlp.toml").model == (moved / "mlp.onnx").resolve()


def test_missing_artefact_is_refused(model: Path, tmp_path: Path) -> None:
    path = write_spec(_spec(model), tmp_path / "mlp.toml")
    model.unlink()
    with pytest.raises(SpecError, match=r"mlp\.toml: deployment\.model 'mlp\.onnx' does not exist"):
        load_spec(path)


def test_changed_artefact_is_refused(model: Path, tmp_path: Path) -> None:
    path = write_spec(_spec(model), tmp_path / "mlp.toml")
    shutil.copy(zoo_model_path("digits"), model)
    with pytest.raises(SpecError, match=r"sha256 .* not the .* the spec was measured on"):
        load_spec(path)
    assert load_spec(path, check_hash=False).name == "mlp"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('backend = "onnxruntime"', 'backend = "tensorrt-llm"'), "unknown backend 'tensorrt-llm'"),
        (('precision = "fp32"', 'precision = "fp12"'), "precision 'fp12' is not one of"),
        (('name = "mlp"', 'name = "my model/1"'), "becomes part of the serving URL"),
        (("threads = 2", "threads = 0"), "options.threads must be a positive integer"),
        (
            ("threads = 2", "thread = 2"),
            r"\[deployment.options\] unknown key .thread.: did you mean .threads.\?",
        ),
        (
            ("max_batch_size = 8", "max_batch_size = 2"),
            "preferred_batch_sizes .* 1..max_batch_size",
        ),
        (("spec_version = 1", "spec_version = 99"), "newer than this crossinfer understands"),
        (
            ("[deployment]", "[deploy]"),
            r"unknown top-level key .deploy.: did you mean .deployment.\?",
        ),
        (('device = "cpu"', 'device = "cpu"\ndevice = "gpu"'), "not valid TOML"),
    ],
)
def test_bad_spec_is_refused_naming_the_key(
    model: Path, tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = write_spec(_spec(model), tmp_path / "mlp.toml")
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_no_such_spec_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no such file .*crossinfer tune"):
        load_spec(tmp_path / "nope.toml")


def test_batching_beyond_what_tune_sets_round_trips(model: Path, tmp_path: Path) -> None:
    batching = BatchingSpec(max_batch_size=8, priority_levels=2, default_priority=2)
    spec = dataclasses.replace(_spec(model), batching=batching)
    path = write_spec(spec, tmp_path / "mlp.toml")
    text = path.read_text()
    # tune's keys always, the others only when set
    assert "priority_levels = 2" in text and "max_queue_size = 1024" in text
    assert "default_timeout_us" not in text
    assert load_spec(path).batching == batching
    unsettled = dataclasses.replace(spec, batching=BatchingSpec(max_batch_size=None))
    with pytest.raises(SpecError, match=r"max_batch_size None .* cannot be written"):
        write_spec(unsettled, tmp_path / "unsettled.toml")
