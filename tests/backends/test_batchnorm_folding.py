"""fold_batch_norms, shared by the torch and jax converters: same outputs, fewer nodes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model
from crossinfer.backends.batchnorm_folding import fold_batch_norms

RNG = np.random.default_rng(0)


def _conv_bn(*, dtype: type = np.float32, bias: bool = True, training: int = 0) -> onnx.ModelProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    tensors = {
        "w": RNG.standard_normal((3, 2, 3, 3)),
        "scale": RNG.uniform(0.5, 2.0, 3),
        "beta": RNG.standard_normal(3),
        "mean": RNG.standard_normal(3),
        "var": RNG.uniform(0.5, 2.0, 3),
    }
    if bias:
        tensors["b"] = RNG.standard_normal(3)
    inits = [numpy_helper.from_array(v.astype(dtype), k) for k, v in tensors.items()]
    attrs = {"training_mode": training} if training else {}
    return make_model(
        [
            helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["c"], pads=[1] * 4),
            helper.make_node(
                "BatchNormalization", ["c", "scale", "beta", "mean", "var"], ["y"], **attrs
            ),
        ],
        [helper.make_tensor_value_info("x", elem, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", elem, [1, 3, 5, 5])],
        inits,
    )


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_folding_keeps_the_outputs_and_drops_the_batchnorm() -> None:
    x = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    for bias in (True, False):
        model = _conv_bn(bias=bias)
        folded, count = fold_batch_norms(model)
        assert count == 1
        assert [n.op_type for n in folded.graph.node] == ["Conv"]
        # the old weight and the BN parameters are gone, the folded pair is there
        assert sorted(t.name for t in folded.graph.initializer) == ["w_bnfolded", "y_bnfolded_bias"]
        np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-5, atol=1e-5)
        assert len(model.graph.node) == 2  # the input model is left as it was


def test_folded_weights_keep_the_model_dtype_unless_told() -> None:
    model = _conv_bn(dtype=np.float16)
    folded, _ = fold_batch_norms(model)
    assert {t.data_type for t in folded.graph.initializer} == {TensorProto.FLOAT16}
    as_fp32, _ = fold_batch_norms(model, weight_dtype=np.float32)
    assert {t.data_type for t in as_fp32.graph.initializer} == {TensorProto.FLOAT}


def test_what_cannot_be_folded_is_left_alone() -> None:
    training, count = fold_batch_norms(_conv_bn(training=1))
    assert count == 0 and len(training.graph.node) == 2
    shared = _conv_bn()
    # the Conv output is also a graph output: folding would change it
    shared.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    _, count = fold_batch_norms(shared)
    assert count == 0
