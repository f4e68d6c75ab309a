"""The text forms of options: good text parsed, bad text refused naming the option."""

from __future__ import annotations

import pytest

from crossinfer.backends.base import Precision
from crossinfer.errors import UsageError
from crossinfer.option_parsing import (
    parse_batch_sizes,
    parse_dims,
    parse_hint,
    parse_knobs,
    parse_names,
    parse_precision,
)
from crossinfer.serve.repository import serving_overrides
from crossinfer.tune.config import tune_config
from crossinfer.tune.constraints import Objective


def test_batch_sizes() -> None:
    assert parse_batch_sizes("1, 8,32,") == (1, 8, 32)
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(UsageError, match="--batch"):
            parse_batch_sizes(bad)


def test_names_dims_knobs() -> None:
    assert parse_names(" OnnxRuntime,,openvino ") == ("onnxruntime", "openvino")
    assert parse_names(None) == ()
    assert parse_dims(["seq=128", "b=2"]) == {"seq": 128, "b": 2}
    with pytest.raises(UsageError, match="--dim 'seq=0'"):
        parse_dims(["seq=0"])
    assert parse_knobs(["mode = compile", "x=a=b"]) == {"mode": "compile", "x": "a=b"}
    with pytest.raises(UsageError, match="given twice"):
        parse_knobs(["mode=eager", "mode=compile"])
    with pytest.raises(UsageError, match="not KEY=VALUE"):
        parse_knobs(["mode"])


def test_precision_and_hint() -> None:
    assert parse_precision("BF16") is Precision.BF16
    with pytest.raises(UsageError, match="--precision 'fp8'"):
        parse_precision("fp8")
    assert parse_hint("latency") == "LATENCY"
    assert parse_hint(None) is None
    with pytest.raises(UsageError, match="--hint 'fast'"):
        parse_hint("fast")


def test_tune_config_from_text() -> None:
    config = tune_config(
        backends="ONNXRuntime",
        targets=["onnxruntime:cpu"],
        precisions="fp32, int8",
        batch="1,4",
        objective="latency",
        max_p99_ms=50.0,
    )
    assert config.backends == ("onnxruntime",)
    assert [str(t) for t in config.targets] == ["onnxruntime:cpu"]
    assert config.precisions == ("fp32", "int8")
    assert config.batch_sizes == (1, 4)
    assert config.objective is Objective.LATENCY
    assert config.constraints.max_p99_ms == 50.0
    with pytest.raises(UsageError, match="--strategy 'random'"):
        tune_config(strategy="random")


def test_serving_overrides() -> None:
    assert serving_overrides() == {}
    assert serving_overrides(backend="openvino:gpu", threads=2, preferred_batch_sizes="4,8") == {
        "backend": "openvino",
        "device": "gpu",
        "threads": 2,
        "preferred_batch_sizes": [4, 8],
    }
    # an explicit --device wins over the one in --backend, as before
    assert serving_overrides(backend="openvino:gpu", device="cpu")["device"] == "cpu"
    assert serving_overrides(options=["mode=compile"]) == {"extra": {"mode": "compile"}}
    with pytest.raises(UsageError, match="--option 'mode'"):
        serving_overrides(options=["mode"])
    with pytest.raises(UsageError, match="--preferred-batch-sizes '4,x'"):
        serving_overrides(preferred_batch_sizes="4,x")
