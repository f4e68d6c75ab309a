"""The first divergent node: a perturbed weight is found at the node that reads it, and the saved
reproducer shows the divergence on its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from typer.testing import CliRunner

from crossinfer.backends.base import Precision
from crossinfer.check.bisect import locate, mark_all_outputs
from crossinfer.check.parity import default_tolerance
from crossinfer.cli import app
from crossinfer.zoo import build_zoo_model

FP32 = default_tolerance(Precision.FP32)


def _perturbed_mlp(tmp_path: Path) -> tuple[Path, Path]:
    """zoo:mlp, and a copy whose second layer's first output row is scaled by 1.5."""
    model = build_zoo_model("zoo:mlp")
    good = tmp_path / "mlp.onnx"
    onnx.save(model, good)
    for tensor in model.graph.initializer:
        if tensor.name == "fc2.weight":
            weight = numpy_helper.to_array(tensor).copy()
            weight[0, :] *= 1.5
            tensor.CopyFrom(numpy_helper.from_array(weight, tensor.name))
    bad = tmp_path / "mlp-perturbed.onnx"
    onnx.save(model, bad)
    return good, bad


def test_mark_all_outputs_makes_every_node_output_a_typed_graph_output() -> None:
    model = build_zoo_model("zoo:mlp")
    marked = mark_all_outputs(model)
    names = [o.name for o in marked.graph.output]
    assert names[0] == model.graph.output[0].name  # the model's own outputs stay first
    assert set(names) == {o for n in model.graph.node for o in n.output}
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in marked.graph.output)
    assert len(model.graph.output) == 1  # the original is untouched


def test_locate_picks_the_first_node_off_and_reports_its_inputs() -> None:
    model = build_zoo_model("zoo:mlp")
    names = [n.output[0] for n in model.graph.node]  # fc1, relu1, fc2, relu2, fc3
    rng = np.random.default_rng(0)
    a = {name: rng.standard_normal((2, 8)).astype(np.float32) for name in names}
    b = {name: value.copy() for name, value in a.items()}
    for late in names[2:]:  # fc2 and everything after it is off
        b[late] = b[late] + 0.5
    found = locate(model, a, b, tolerance=FP32)
    assert found.found and found.node == "/fc2/Gemm" and found.op_type == "Gemm"
    assert found.node_index == 2 and found.compared == 3
    assert abs(found.outputs[0].max_abs_error - 0.5) < 1e-6
    assert [e.name for e in found.inputs] == [names[1]] and found.inputs[0].passed
    assert "its inputs within tolerance" in found.summary()
    # the same values: nothing found, every tensor compared
    same = locate(model, a, a, tolerance=FP32)
    assert not same.found and same.compared == 5


def test_bisect_finds_a_perturbed_weight_and_saves_a_reproducer(tmp_path: Path) -> None:
    good, bad = _perturbed_mlp(tmp_path)
    repro = tmp_path / "repro"
    result = CliRunner().invoke(
        app,
        [
            "check",
            str(good),
            "--bisect",
            "onnxruntime:cpu",
            "onnxruntime:cpu",
            "--bisect-model",
            str(bad),
            "--repro-dir",
            str(repro),
            "--batch",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output  # a divergence found
    found = json.loads(result.stdout)
    assert found["node"] == "/fc2/Gemm" and found["op_type"] == "Gemm"
    assert [e["name"] for e in found["inputs"]] == ["/relu1/Relu_output_0"]
    assert found["inputs"][0]["passed"] and found["inputs"][0]["max_abs_error"] == 0.0
    assert not found["outputs"][0]["passed"]

    # the reproducer: the node alone, with its perturbed weight, fed the trusted side's input
    alone = onnx.load(repro / "model.onnx")
    assert [n.op_type for n in alone.graph.node] == ["Gemm"]
    assert {t.name for t in alone.graph.initializer} == {"fc2.weight", "fc2.bias"}
    data = repro / "test_data_set_0"
    fed = numpy_helper.to_array(onnx.load_tensor(str(data / "input_0.pb")))
    expected = numpy_helper.to_array(onnx.load_tensor(str(data / "output_0.pb")))
    assert fed.shape == (2, 256)
    session = ort.InferenceSession(str(repro / "model.onnx"), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {alone.graph.input[0].name: fed})
    # only the perturbed first output column differs from what the good model computed
    assert not np.allclose(actual[:, 0], expected[:, 0], atol=1e-3)
    np.testing.assert_allclose(actual[:, 1:], expected[:, 1:], rtol=1e-5, atol=1e-5)
