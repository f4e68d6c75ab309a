"""ModelArtifact: what load_model reports for good models, and the message for every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import linear_model, make_model
from crossinfer.errors import (
    ModelFormatError,
    ModelNotFoundError,
    ModelValidationError,
    UnsupportedOpsetError,
)
from crossinfer.model import count_parameters, load_model


def test_load_reports_signature_opsets_histogram_and_hash(linear_path: Path) -> None:
    artifact = load_model(linear_path)
    assert [(t.name, t.dtype, t.shape) for t in artifact.inputs] == [("x", "float32", ("batch", 8))]
    assert [(t.name, t.dtype, t.shape) for t in artifact.outputs] == [
        ("y", "float32", ("batch", 4))
    ]
    assert artifact.opsets == {"": 17}
    assert artifact.ir_version == 8
    assert artifact.op_histogram == {"Add": 1, "MatMul": 1, "Relu": 1}
    assert artifact.parameter_count == 8 * 4 + 4
    assert artifact.file_size == linear_path.stat().st_size
    assert len(artifact.sha256) == 64
    # the hash is of the content: a copy elsewhere has the same one, a changed weight does not
    copy = linear_path.parent / "copy.onnx"
    copy.write_bytes(linear_path.read_bytes())
    assert load_model(copy).sha256 == artifact.sha256
    changed = linear_model()
    changed.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros(4, np.float32), "b"))
    onnx.save(changed, copy)
    assert load_model(copy).sha256 != artifact.sha256


def test_external_data_is_loaded_hashed_and_counted(tmp_path: Path) -> None:
    model = linear_model()
    path = tmp_path / "ext.onnx"
    onnx.save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.weights",
        size_threshold=0,
    )
    artifact = load_model(path)
    assert artifact.external_data == ("ext.weights",)
    assert artifact.file_size == path.stat().st_size + (tmp_path / "ext.weights").stat().st_size
    assert artifact.parameter_count == 36
    before = artifact.sha256
    weights = tmp_path / "ext.weights"
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert load_model(path).sha256 != before


def test_missing_external_data_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(linear_model(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelFormatError, match=r"external data that is missing: .*w\.bin"):
        load_model(path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"model file '.*nope\.onnx' does not exist"):
        load_model(tmp_path / "nope.onnx")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="is a directory"):
        load_model(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelFormatError, match=r"'.*empty\.onnx' is empty \(0 bytes\)"):
        load_model(path)


def test_truncated_file(linear_path: Path) -> None:
    data = linear_path.read_bytes()
    linear_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelFormatError, match=r"linear\.onnx' is not a readable ONNX model .*truncated"
    ):
        load_model(linear_path)


def test_corrupt_bytes(linear_path: Path) -> None:
    data = bytearray(linear_path.read_bytes())
    data[0:8] = b"\xff" * 8
    linear_path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=r"linear\.onnx' is not a readable ONNX model"):
        load_model(linear_path)


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n not a model", b"plain text, not a model at all\n", b'{"json": true}'],
    ids=["png", "text", "json"],
)
def test_not_onnx(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other.onnx"
    path.write_bytes(content)
    with pytest.raises(
        ModelFormatError, match=r"other\.onnx'.*(not a readable ONNX model|not an ONNX model)"
    ):
        load_model(path)


def test_opset_newer_than_installed_onnx(tmp_path: Path) -> None:
    model = linear_model()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    path = tmp_path / "future.onnx"
    onnx.save(model, path)
    with pytest.raises(
        UnsupportedOpsetError,
        match=rf"future\.onnx' uses opset {model.opset_import[0].version}, newer than the installed onnx",
    ):
        load_model(path)


def test_ir_version_newer_than_installed_onnx(tmp_path: Path) -> None:
    model = linear_model()
    model.ir_version = onnx.IR_VERSION + 1
    path = tmp_path / "future_ir.onnx"
    onnx.save(model, path)
    with pytest.raises(
        UnsupportedOpsetError, match=r"has IR version \d+, newer than the installed onnx"
    ):
        load_model(path)


def test_invalid_graph_is_a_validation_error(tmp_path: Path) -> None:
    # the Add reads a tensor nothing produces
    model = make_model(
        [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    with pytest.raises(
        ModelValidationError, match=r"broken\.onnx' is not a valid ONNX model: .*ghost"
    ):
        load_model(path)


def test_shape_inference_failure_is_a_validation_error(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
    )
    path = tmp_path / "shapes.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelValidationError, match=r"shapes\.onnx'"):
        load_model(path)


def test_parameter_count_skips_batchnorm_statistics_and_int_constants() -> None:
    c = 3
    inits = [
        numpy_helper.from_array(np.ones((c, c, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.ones(c, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(c, np.float32), "bias"),
        numpy_helper.from_array(np.zeros(c, np.float32), "mean"),
        numpy_helper.from_array(np.ones(c, np.float32), "var"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
    ]
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node(
                "BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn"
            ),
            helper.make_node("Reshape", ["bn", "shape"], ["y"], name="flat"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])],
        inits,
    )
    assert count_parameters(model) == c * c + c + c


def test_zoo_source_goes_through_the_same_validation() -> None:
    artifact = load_model("zoo:mlp")
    assert artifact.source == "zoo:mlp"
    assert artifact.inputs[0].shape is not None and artifact.inputs[0].shape[0] == "batch"
