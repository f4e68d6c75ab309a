"""Shared fixtures: small ONNX models written to tmp dirs, and a zoo cache shared by the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # onnxruntime 1.31 loads IR <= 13; onnx 1.23 writes 14 by default
    return model


def linear_model() -> onnx.ModelProto:
    """y = relu(x @ W + b) with a symbolic batch: the smallest model with weights."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
            helper.make_node("Add", ["h", "b"], ["z"], name="add"),
            helper.make_node("Relu", ["z"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w, b],
    )


@pytest.fixture
def linear_path(tmp_path: Path) -> Path:
    path = tmp_path / "linear.onnx"
    onnx.save(linear_model(), path)
    return path


@pytest.fixture(scope="session", autouse=True)
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One zoo cache and results store for the whole run (resnet50 is built once), never the user's own."""
    path = tmp_path_factory.mktemp("zoo-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("CROSSINFER_CACHE_DIR", str(path))
    # and the results store: tests never write the user's own
    mp.setenv("CROSSINFER_STORE", str(tmp_path_factory.mktemp("store") / "results.sqlite"))
    yield path
    mp.undo()
