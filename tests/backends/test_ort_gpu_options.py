"""ONNX Runtime's CUDA and TensorRT provider options from crossinfer's precision and settings.

onnxruntime-gpu is not installed on our machines, so the mapping is tested as the pure function it
is; IO binding (the bench path) runs for real on the CPU provider.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.backends.onnxruntime import PROVIDERS, provider_options
from crossinfer.errors import UsageError
from crossinfer.model import load_model

CUDA = PROVIDERS["cuda"]
TRT = PROVIDERS["tensorrt"]


@pytest.mark.parametrize(
    ("precision", "flag"),
    [
        (Precision.FP16, "trt_fp16_enable"),
        (Precision.BF16, "trt_bf16_enable"),
        (Precision.INT8, "trt_int8_enable"),
    ],
)
def test_tensorrt_precision_switches_its_builder_flag(precision: Precision, flag: str) -> None:
    options, config, notes = provider_options(TRT, precision, {}, cache_dir="/c")
    assert options[flag] == "True"
    others = {"trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable"} - {flag}
    assert not others & set(options)
    assert config == {} and notes == []


def test_tensorrt_fp32_sets_no_precision_flag_and_caches_engines(tmp_path: Path) -> None:
    options, _, _ = provider_options(TRT, Precision.FP32, {}, cache_dir=str(tmp_path))
    assert not any(k.endswith(("fp16_enable", "bf16_enable", "int8_enable")) for k in options)
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_timing_cache_path"] == str(tmp_path)


def test_tensorrt_engine_cache_defaults_under_the_crossinfer_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CROSSINFER_CACHE_DIR", str(tmp_path))
    options, _, _ = provider_options(TRT, Precision.FP16, {})
    assert options["trt_engine_cache_path"] == str(tmp_path / "onnxruntime-tensorrt")


def test_tensorrt_user_options_win_and_unknown_keys_stay_session_config() -> None:
    extra = {"trt_fp16_enable": "False", "trt_max_workspace_size": "1073741824", "x.y": "1"}
    options, config, _ = provider_options(TRT, Precision.FP16, extra, cache_dir="/c")
    assert options["trt_fp16_enable"] == "False"
    assert options["trt_max_workspace_size"] == "1073741824"
    assert config == {"x.y": "1"}


def test_cuda_fp32_is_ieee_and_tf32_asks_for_tf32() -> None:
    fp32, _, notes = provider_options(CUDA, Precision.FP32, {})
    tf32, _, _ = provider_options(CUDA, Precision.TF32, {})
    assert fp32["use_tf32"] == "0" and tf32["use_tf32"] == "1"
    assert fp32["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert notes == []


def test_cuda_fp16_is_noted_as_the_models_own_types() -> None:
    options, _, notes = provider_options(
        CUDA, Precision.FP16, {"cudnn_conv_algo_search": "heuristic"}
    )
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert "use_tf32" not in options
    assert notes and "crossinfer optimize --precision fp16" in notes[0]


def test_cuda_refuses_an_unknown_conv_algo_search() -> None:
    with pytest.raises(UsageError, match="cudnn_conv_algo_search 'FASTEST' is not one of"):
        provider_options(CUDA, Precision.FP32, {"cudnn_conv_algo_search": "fastest"})


def test_cpu_keeps_extra_as_session_config_and_notes_precision() -> None:
    options, config, notes = provider_options(
        PROVIDERS["cpu"], Precision.BF16, {"session.intra_op.allow_spinning": "0"}
    )
    assert options == {}
    assert config == {"session.intra_op.allow_spinning": "0"}
    assert notes == ["precision=bf16 (ORT runs the model's own types)"]


def test_bind_runs_on_bound_memory_and_matches_run(linear_path: Path) -> None:
    artifact = load_model(linear_path)
    session = get_backend("onnxruntime").prepare(artifact, "cpu", SessionOptions())
    feeds = {"x": np.arange(16, dtype=np.float32).reshape(2, 8)}
    step = session.bind(feeds)  # type: ignore[attr-defined]
    step()
    (bound,) = step()
    np.testing.assert_allclose(bound.numpy(), session.run(feeds)["y"], rtol=1e-6)
    assert bound.device_name().lower() == "cpu"
    assert session.describe()["provider_options"] == {}
    session.close()
