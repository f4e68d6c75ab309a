"""Tiny ONNX models and a model repository for the serving tests, plus in-process reference runs."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crossinfer.backends.base import (
    BackendEntry,
    Compatibility,
    DeviceInfo,
    Session,
    SessionOptions,
    get_backend,
)
from crossinfer.model import ModelArtifact, load_model
from crossinfer.spec import BatchingSpec, DeploymentSpec, write_spec
from crossinfer.zoo import zoo_model_path


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnxruntime loads IR <= 13; onnx writes newer by default
    return model


def fp16_add_model() -> onnx.ModelProto:
    """y = x + 0.5 on FLOAT16 [batch, 4]."""
    half = numpy_helper.from_array(np.full(4, 0.5, np.float16), "half")
    return _model(
        helper.make_graph(
            [helper.make_node("Add", ["x", "half"], ["y"])],
            "fp16_add",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 4])],
            [half],
        )
    )


def bytes_identity_model() -> onnx.ModelProto:
    """STRING [batch, 2] passed through unchanged (BYTES on the wire)."""
    return _model(
        helper.make_graph(
            [helper.make_node("Identity", ["text"], ["same"])],
            "bytes_identity",
            [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2])],
            [helper.make_tensor_value_info("same", TensorProto.STRING, ["batch", 2])],
        )
    )


def bf16_identity_model() -> onnx.ModelProto:
    """BFLOAT16 [batch, 4] passed through (ONNX Runtime's Python API cannot feed BF16; OpenVINO can)."""
    return _model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "bf16_identity",
            [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])],
            [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 4])],
        )
    )


def two_output_model() -> onnx.ModelProto:
    """doubled = 2a, summed = a + b on FP32 [batch, 3]: requested outputs pick between them."""
    two = numpy_helper.from_array(np.full(3, 2.0, np.float32), "two")
    return _model(
        helper.make_graph(
            [
                helper.make_node("Mul", ["a", "two"], ["doubled"]),
                helper.make_node("Add", ["a", "b"], ["summed"]),
            ],
            "two_outputs",
            [
                helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3]),
            ],
            [
                helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["batch", 3]),
                helper.make_tensor_value_info("summed", TensorProto.FLOAT, ["batch", 3]),
            ],
            [two],
        )
    )


def fixed_shape_model() -> onnx.ModelProto:
    """relu on FP32 [2, 3]: no batch dim, so served without batching."""
    return _model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "fixed",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        )
    )


def model_dir(root: Path, name: str, model: onnx.ModelProto | Path, config: str = "") -> Path:
    """``root/name/model.onnx`` (+ config.toml when given)."""
    folder = root / name
    folder.mkdir(parents=True)
    if isinstance(model, Path):
        shutil.copy(model, folder / "model.onnx")
    else:
        onnx.save(model, folder / "model.onnx")
    if config:
        (folder / "config.toml").write_text(config)
    return folder


def digits_spec(root: Path, name: str = "digits", **batching: Any) -> Path:
    """A deployment spec for zoo:digits next to a copy of the model, as `tune` would write it."""
    model = root / f"{name}.model.onnx"
    shutil.copy(zoo_model_path("zoo:digits"), model)
    spec = DeploymentSpec(
        name=name,
        model=model,
        backend="onnxruntime",
        device="cpu",
        batching=BatchingSpec(**{"max_batch_size": 16, **batching}),
        model_sha256=load_model(model).sha256,
    )
    return write_spec(spec, root / f"{name}.toml")


def reference(source: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model run in-process on ONNX Runtime: what the server must answer."""
    session = get_backend("onnxruntime").prepare(load_model(source), "cpu")
    try:
        return session.run(feeds)
    finally:
        session.close()


GATE = threading.Event()
"""BlockingBackend.prepare waits for this: a prepare run on the event loop would deadlock it."""


class BlockingBackend:
    """ONNX Runtime, but `prepare` blocks until GATE is set (proves loading runs off the loop)."""

    name = "blocking"

    def __init__(self) -> None:
        self._ort = get_backend("onnxruntime")

    def version(self) -> str:
        return self._ort.version()

    def devices(self) -> list[DeviceInfo]:
        return self._ort.devices()

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility:
        return self._ort.supports(artifact, device)

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> Session:
        if not GATE.wait(timeout=10):
            raise TimeoutError("GATE was never set: prepare blocked the event loop")
        return self._ort.prepare(artifact, device, options)


BLOCKING_ENTRY = BackendEntry("blocking", __name__, "BlockingBackend", "(a test backend)")
