"""The serving settings are one schema: a deployment spec and serve's config.toml (and command
line) accept and refuse the same values, with the same defaults; unknown keys name the nearest."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from crossinfer.backends.base import Precision, SessionOptions
from crossinfer.errors import CrossinferError, SpecError, UsageError
from crossinfer.schema import read_table, unknown_key_message
from crossinfer.serve.repository import CONFIG_KEYS, ServingConfig, apply_config
from crossinfer.spec import (
    BATCHING_SCHEMA,
    DEFAULT_MAX_QUEUE_SIZE,
    OPTION_SCHEMA,
    BatchingSpec,
    load_spec,
)
from crossinfer.zoo import zoo_model_path

SETTINGS: dict[str, Any] = {
    "threads": 2,
    "streams": 1,
    "performance_hint": "THROUGHPUT",
    "graph_optimization_level": "all",
    "extra": {"NUM_STREAMS": 4, "enable": "1"},
    "max_batch_size": 8,
    "max_queue_delay_us": 500,
    "preferred_batch_sizes": [4, 8],
    "max_queue_size": 10,
    "instances": 2,
    "default_timeout_us": 1000,
    "priority_levels": 2,
    "default_priority": 2,
}


def _spec_file(tmp_path: Path, settings: dict[str, Any]) -> Path:
    """A spec laying `settings` out the spec's way: options and batching tables."""
    shutil.copy(zoo_model_path("mlp"), tmp_path / "mlp.onnx")
    deployment: dict[str, Any] = {
        "name": "mlp",
        "model": "mlp.onnx",
        "backend": "onnxruntime",
        "device": "cpu",
        "options": {k: v for k, v in settings.items() if k in OPTION_SCHEMA},
        "batching": {k: v for k, v in settings.items() if k not in OPTION_SCHEMA},
    }
    path = tmp_path / "mlp.toml"
    path.write_text(tomli_w.dumps({"spec_version": 1, "deployment": deployment}))
    return path


def _both(tmp_path: Path, settings: dict[str, Any]) -> tuple[Any, Any]:
    """What the spec path and the config.toml path make of `settings` (or the error each raises)."""
    results: list[Any] = []
    for read in (
        lambda: load_spec(_spec_file(tmp_path, settings)),
        lambda: apply_config(ServingConfig(), settings, "mlp/config.toml"),
    ):
        try:
            results.append(read())
        except CrossinferError as exc:
            results.append(exc)
    return results[0], results[1]


def test_the_same_settings_read_the_same_on_both_paths(tmp_path: Path) -> None:
    spec, config = _both(tmp_path, SETTINGS)
    assert (
        spec.options
        == config.options
        == SessionOptions(
            precision=Precision.FP32,
            threads=2,
            streams=1,
            performance_hint="THROUGHPUT",
            graph_optimization_level="all",
            extra={"NUM_STREAMS": "4", "enable": "1"},
        )
    )
    assert spec.batching == config.batching
    assert spec.batching.preferred_batch_sizes == (4, 8)
    assert spec.batching.default_priority == 2


def test_defaults_agree(tmp_path: Path) -> None:
    spec, config = _both(tmp_path, {})
    assert spec.batching.max_queue_size == config.batching.max_queue_size == DEFAULT_MAX_QUEUE_SIZE
    assert spec.options == config.options == SessionOptions()
    # the one default that differs on purpose: a spec says what tune chose (0: no batching);
    # a config.toml that does not say lets serve batch when the model can
    assert spec.batching.max_batch_size == 0 and config.batching.max_batch_size is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("threads", 0, "threads must be a positive integer, got 0"),
        ("streams", -1, "streams must be a positive integer, got -1"),
        ("threads", True, "threads must be an integer, got True"),
        ("performance_hint", 3, "performance_hint must be a non-empty string, got 3"),
        ("extra", ["a"], "extra must be a table of runtime settings"),
        ("max_batch_size", -1, "max_batch_size must be an integer >= 0, got -1"),
        ("max_queue_size", "many", "max_queue_size must be an integer, got 'many'"),
        ("instances", 0, "instances must be a positive integer, got 0"),
        (
            "preferred_batch_sizes",
            [0],
            "preferred_batch_sizes must be a list of positive integers, got [0]",
        ),
        ("priority_levels", 0, "priority_levels must be a positive integer, got 0"),
    ],
)
def test_a_bad_value_is_refused_the_same_on_both_paths(
    tmp_path: Path, key: str, value: Any, message: str
) -> None:
    spec, config = _both(tmp_path, {key: value})
    assert isinstance(spec, SpecError) and isinstance(config, UsageError)
    assert message in str(spec) and message in str(config)
    assert "mlp.toml" in str(spec) and "mlp/config.toml" in str(config)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"max_batch_size": 4, "preferred_batch_sizes": [8]},
            r"must lie in 1..max_batch_size \(4\)",
        ),
        ({"priority_levels": 2, "default_priority": 3}, r"default_priority must lie in 1..2"),
    ],
)
def test_contradicting_batching_is_refused_the_same_on_both_paths(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    spec, config = _both(tmp_path, settings)
    assert isinstance(spec, SpecError) and isinstance(config, UsageError)
    with pytest.raises(SpecError, match=message):
        raise spec
    with pytest.raises(UsageError, match=message):
        raise config


def test_unknown_keys_name_the_nearest(tmp_path: Path) -> None:
    spec, config = _both(tmp_path, {"treads": 2})
    # a key of neither table goes to the batching table in _spec_file
    assert "[deployment.batching] unknown key 'treads'" in str(spec)
    assert str(config) == "mlp/config.toml: unknown key 'treads': did you mean 'threads'?"
    with pytest.raises(SpecError, match=r"\[deployment.options\] unknown key 'treads': did you"):
        path = _spec_file(tmp_path, {})
        path.write_text(
            path.read_text().replace("[deployment.options]", "[deployment.options]\ntreads = 2")
        )
        load_spec(path)
    with pytest.raises(UsageError, match=r"unknown key 'max_batch': did you mean 'max_batch_size'"):
        apply_config(ServingConfig(), {"max_batch": 2}, "command line")


def test_config_keys_are_the_serving_schema_plus_the_target() -> None:
    assert set(CONFIG_KEYS) == {
        *OPTION_SCHEMA,
        *BATCHING_SCHEMA,
        "backend",
        "device",
        "precision",
        "model",
        "scale",
    }
    # every batching key is a field of the one batching record, and back
    assert set(BATCHING_SCHEMA) == set(BatchingSpec.__dataclass_fields__)


def test_read_table_is_strict() -> None:
    schema = {"name": lambda v: v}
    with pytest.raises(UsageError, match=r"f.toml: \[t\] must be a table, got 3"):
        read_table(3, schema, where="f.toml", table="t", error=UsageError)
    with pytest.raises(
        UsageError, match=r"f.toml: unknown top-level key 'nmae': did you mean 'name'\?"
    ):
        read_table({"nmae": 1}, schema, where="f.toml", error=UsageError)
    assert unknown_key_message("zzz", ["name", "kind"]) == "unknown key 'zzz'; known: kind, name"
