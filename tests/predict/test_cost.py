"""FLOPs and bytes per node: exact on small graphs, REFERENCE.md's counts on zoo models."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model
from crossinfer.model import load_model
from crossinfer.predict.cost import model_cost


def _conv_relu_gemm() -> object:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
    dw = numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "DW")
    fc = numpy_helper.from_array(rng.standard_normal((8 * 4 * 4, 10)).astype(np.float32), "FC")
    shape = numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape")
    return make_model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "DW"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["d", "shape"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "FC"], ["y"], name="fc"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [w, dw, fc, shape],
    )


def test_flops_and_bytes_of_a_small_graph_are_exact() -> None:
    cost = model_cost(_conv_relu_gemm())  # type: ignore[arg-type]
    by_name = {n.name: n for n in cost.nodes}
    # conv: 8x4x4 outputs x (3 x 3x3) MACs each
    assert by_name["conv"].macs == 8 * 16 * 27
    assert by_name["conv"].op_class == "conv"
    assert by_name["dw"].macs == 8 * 16 * 9
    assert by_name["dw"].op_class == "depthwise-conv"
    assert by_name["fc"].macs == 10 * 128
    assert by_name["fc"].op_class == "matmul"
    assert by_name["relu"].flops == 128
    assert cost.macs == 8 * 16 * 27 + 8 * 16 * 9 + 1280
    assert cost.flops == 2 * cost.macs + 128  # MACs x 2 plus one FLOP per ReLU output
    # weights, not activations: the conv reads 216 weights and 48 inputs, writes 128
    assert by_name["conv"].weight_elements == 216
    assert by_name["conv"].activation_elements == 48 + 128
    assert by_name["flatten"].activation_elements == 0  # a view moves nothing
    assert cost.io_elements == 48 + 10


def test_fusion_keeps_the_internal_tensor_off_memory() -> None:
    cost = model_cost(_conv_relu_gemm())  # type: ignore[arg-type]
    first = cost.groups[0]
    assert [n.name for n in first.nodes] == ["conv", "relu"]
    # conv's output feeds only the ReLU: it never reaches memory; read x, write r
    assert first.activation_elements == 48 + 128
    assert first.bytes_moved("fp32", 1) == (216 + 48 + 128) * 4
    assert first.bytes_moved("int8", 2) == 216 + 2 * (48 + 128)
    # batch 1 fp32 bytes of the whole model = sum over groups
    assert cost.bytes_moved("fp32") == sum(g.bytes_moved("fp32", 1) for g in cost.groups)


@pytest.mark.parametrize(
    ("source", "macs", "tolerance"),
    [
        ("zoo:resnet50", 4.09e9, 0.005),  # REFERENCE.md: ResNet-50 @224 4.09 G MACs
        ("zoo:mobilenetv2", 0.30e9, 0.01),  # MobileNetV2 @224 0.30 G MACs
        ("zoo:resnet18", 1.814e9, 0.005),  # torchvision's "1.81 GFLOPS" (MACs)
    ],
)
def test_zoo_models_count_the_published_macs(source: str, macs: float, tolerance: float) -> None:
    artifact = load_model(source)
    cost = model_cost(artifact.load_proto())
    assert cost.macs == pytest.approx(macs, rel=tolerance)
    # element-wise work (bias, BN, ReLU6) adds a few percent: MobileNetV2 3.3%, ResNets under 1%
    assert 2 * cost.macs < cost.flops < 2.1 * cost.macs
    assert not cost.unknown_shape_nodes


def test_bert_counts_projections_and_attention() -> None:
    layers, seq, hidden, ffn = 1, 32, 768, 3072
    cost = model_cost(load_model(f"zoo:bert-base?layers={layers}&seq={seq}").load_proto())
    per_layer = 4 * seq * hidden * hidden + 2 * seq * hidden * ffn + 2 * seq * seq * hidden
    pooler = hidden * hidden
    assert cost.macs == pytest.approx(layers * per_layer + pooler, rel=0.001)
    assert cost.flops_by_class()["matmul"] == pytest.approx(2 * cost.macs, rel=0.001)


def _attention_block() -> object:
    """Q.K^T / 8 + mask -> Softmax -> .V, then a bias and a tanh-free GELU (x * erf(x/√2))."""
    seq, dim = 16, 8
    rng = np.random.default_rng(0)
    perm = [0, 2, 1]
    mask = numpy_helper.from_array(np.zeros((1, seq, seq), dtype=np.float32), "mask")
    eight = numpy_helper.from_array(np.array(8.0, dtype=np.float32), "eight")
    root2 = numpy_helper.from_array(np.array(1.41421, dtype=np.float32), "root2")
    bias = numpy_helper.from_array(rng.standard_normal(dim).astype(np.float32), "bias")
    return make_model(
        [
            helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=perm),
            helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
            helper.make_node("Div", ["s", "eight"], ["ss"], name="scale"),
            helper.make_node("Add", ["ss", "mask"], ["sm"], name="mask"),
            helper.make_node("Softmax", ["sm"], ["p"], name="softmax", axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["o"], name="pv"),
            helper.make_node("Add", ["o", "bias"], ["ob"], name="bias"),
            helper.make_node("Div", ["ob", "root2"], ["h"], name="gelu_div"),
            helper.make_node("Erf", ["h"], ["e"], name="gelu_erf"),
            helper.make_node("Mul", ["ob", "e"], ["y"], name="gelu_mul"),
        ],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", seq, dim])
            for name in ("q", "k", "v")
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, dim])],
        [mask, eight, root2, bias],
    )


def test_attention_and_gelu_fuse_into_two_kernels() -> None:
    cost = model_cost(_attention_block())  # type: ignore[arg-type]
    # the transpose feeds only a matmul: the matmul reads K transposed, no copy is made
    assert [[n.name for n in g.nodes] for g in cost.groups if not g.kernels] == [["kt"]]
    attention, gelu = (g for g in cost.groups if g.kernels)
    assert attention.op_class == "attention"
    assert [n.name for n in attention.nodes] == ["qk", "scale", "mask", "softmax", "pv", "bias"]
    # the 16x16 scores stay on chip: the kernel reads Q, K and V, writes the output (the mask,
    # the scale and the bias are constants: weights)
    assert attention.activation_elements == 3 * 16 * 8 + 16 * 8
    assert attention.weight_elements == 16 * 16 + 1 + 8
    # GELU reads its input twice (Div and Mul): one element-wise kernel, which loads it once
    assert gelu.op_class == "elementwise"
    assert [n.name for n in gelu.nodes] == ["gelu_div", "gelu_erf", "gelu_mul"]
    assert gelu.activation_elements == 16 * 8 + 16 * 8
