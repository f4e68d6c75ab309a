"""Quantization leaves nothing in the working directory: ORT's failed shape inference saves its
partial model (sym_shape_infer_temp.onnx and a <uuid>.data) to the current folder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
from onnx import TensorProto, helper

from crossinfer.passes.int8_static import pre_process


def test_incomplete_shape_inference_writes_into_the_scratch_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a custom-domain op: ORT's symbolic shape inference cannot finish, and saves what it has
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Foo", ["x"], ["u"], domain="com.example"),
                helper.make_node("Relu", ["u"], ["y"]),
            ],
            "custom",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = 8
    cwd = tmp_path / "cwd"
    scratch = tmp_path / "scratch"
    cwd.mkdir()
    scratch.mkdir()
    onnx.save(model, cwd / "custom.onnx")
    monkeypatch.chdir(cwd)
    # a relative path, as a user types it: it must still be found from the scratch folder
    artifact = SimpleNamespace(path=Path("custom.onnx"))
    source, note = pre_process(artifact, scratch)  # type: ignore[arg-type]
    assert source == Path("custom.onnx")
    assert note == "skipped: quant_pre_process failed (Incomplete symbolic shape inference)"
    assert sorted(p.name for p in cwd.iterdir()) == ["custom.onnx"]
    assert "sym_shape_infer_temp.onnx" in {p.name for p in scratch.iterdir()}
