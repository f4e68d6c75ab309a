"""LiteRT: a committed .tflite runs everywhere the runtime is; conversion where TensorFlow is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import make_model
from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.errors import BackendUnavailableError, InputError
from crossinfer.model import load_model

pytest.importorskip(
    "ai_edge_litert", reason="LiteRT is not installed: pip install 'crossinfer[litert]'"
)

from crossinfer.backends import litert

# conftest.linear_model() converted by onnx2tf 1.28.8 (FP32): relu(x @ W + b), 8 -> 4
LINEAR_TFLITE = Path(__file__).parent / "data" / "linear_float32.tflite"
needs_converter = pytest.mark.skipif(
    litert.converter_missing() is not None,
    reason=f"no ONNX -> LiteRT converter here: {litert.converter_missing()}",
)


def _reference(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return np.asarray(ort.InferenceSession(str(path)).run(None, feeds)[0])


def test_a_tflite_runs_with_parity_at_any_batch(linear_path: Path) -> None:
    artifact = load_model(linear_path)
    session = litert.LiteRtSession(artifact, LINEAR_TFLITE, SessionOptions(threads=1))
    rng = np.random.default_rng(1)
    for batch in (1, 5, 2):  # the interpreter is resized for each new batch
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        out = session.run({"x": x})
        assert list(out) == ["y"] and out["y"].shape == (batch, 4)
        np.testing.assert_allclose(out["y"], _reference(linear_path, {"x": x}), atol=1e-5)
    info = session.describe()
    assert info["precision"] == "fp32" and info["threads"] == 1
    placement = session.placement()
    assert placement is not None and placement.fallback_count == 0
    assert any(name.startswith("FULLY_CONNECTED") for name in placement.node_devices)
    with pytest.raises(InputError, match=r"input 'x' expects FLOAT32 of shape \[batch,8\]"):
        session.run({"x": np.zeros((1, 8), np.float64)})
    session.close()


def test_without_the_converter_the_backend_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(litert, "converter_missing", lambda: "onnx2tf is not installed: hint")
    with pytest.raises(BackendUnavailableError, match="backend 'litert' cannot be used: onnx2tf"):
        get_backend("litert")


@needs_converter
def test_digits_fp32_parity_and_int8_accuracy() -> None:
    from crossinfer.zoo import zoo_dataset

    artifact = load_model("zoo:digits")
    dataset = zoo_dataset("zoo:digits")
    assert dataset is not None
    backend = get_backend("litert")
    assert backend.supports(artifact, "cpu").supported
    reference = _reference(artifact.path, dict(dataset.inputs))
    fp32 = backend.prepare(artifact, "cpu", SessionOptions(precision=Precision.FP32))
    logits = next(iter(fp32.run(dataset.inputs).values()))
    np.testing.assert_allclose(logits, reference, atol=1e-4)
    # full-integer PTQ calibrated on the digits data set, as int8-static is
    int8 = backend.prepare(artifact, "cpu", SessionOptions(precision=Precision.INT8))
    assert int8.describe()["tflite"].endswith("_full_integer_quant.tflite")
    predicted = next(iter(int8.run(dataset.inputs).values())).argmax(axis=1)
    assert (predicted == dataset.labels).mean() >= 0.95
    assert (predicted == reference.argmax(axis=1)).mean() >= 0.97


@needs_converter
def test_custom_domain_ops_are_named_as_unsupported(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="custom", domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, tmp_path / "custom.onnx")
    compat = get_backend("litert").supports(load_model(tmp_path / "custom.onnx"), "cpu")
    assert not compat.supported
    assert compat.unsupported_ops == ("com.example:Relu",)


def test_channels_last_outputs_come_back_channels_first() -> None:
    # a pooling's output as onnx2tf leaves it (NHWC) and as the ONNX graph declares it (NCHW)
    nhwc = np.arange(12, dtype=np.float32).reshape(1, 2, 3, 2)
    got = litert._channels_first(nhwc, ("batch", 2, 2, 3))
    assert got.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(got, np.moveaxis(nhwc, -1, 1))
    # already as declared, 2-D, or fitting both ways: left as it came
    assert litert._channels_first(nhwc, (1, 2, 3, 2)) is nhwc
    assert litert._channels_first(np.zeros((2, 5)), (2, 5)).shape == (2, 5)
    square = np.zeros((1, 3, 3, 3), dtype=np.float32)
    assert litert._channels_first(square, (1, 3, 3, 3)) is square
