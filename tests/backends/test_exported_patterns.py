"""Patterns from exported graphs (torchvision, timm, transformers) on the torch and jax converters.

Each model here is a few nodes built with onnx.helper that reproduce one pattern the issue-13
corpus hit; outputs are compared with ONNX Runtime's. The full exported models are in
benchmarks/export_corpus.py and benchmarks/check_corpus.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model
from crossinfer.backends.base import get_backend
from crossinfer.backends.normalize import normalize
from crossinfer.errors import BackendUnavailableError, CompileError, UnsupportedNodeError
from crossinfer.model import load_model

F = TensorProto.FLOAT
I64 = TensorProto.INT64
RNG = np.random.default_rng(13)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.3, name)


def _vi(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def identity_fed_conv() -> onnx.ModelProto:
    """The TorchScript exporter's alias: two Convs share one bias through Identity nodes, and a
    weight comes from a Constant through an Identity chain."""
    weight = _w("w", 4, 3, 3, 3)
    return make_model(
        [
            helper.make_node("Constant", [], ["w_const"], name="w_constant", value=weight),
            helper.make_node("Identity", ["w_const"], ["w_alias1"], name="alias_w1"),
            helper.make_node("Identity", ["w_alias1"], ["w_alias2"], name="alias_w2"),
            helper.make_node("Identity", ["b"], ["onnx::Conv_403"], name="alias_b"),
            helper.make_node(
                "Conv", ["x", "w_alias2", "onnx::Conv_403"], ["c1"], name="conv1", pads=[1] * 4
            ),
            helper.make_node("Identity", ["b"], ["onnx::Conv_404"], name="alias_b2"),
            helper.make_node("Conv", ["x", "w2", "onnx::Conv_404"], ["c2"], name="conv2"),
            helper.make_node("Relu", ["c1"], ["r"], name="relu"),
            helper.make_node("Add", ["r", "c2"], ["y"], name="add"),
        ],
        [_vi("x", F, ["batch", 3, 8, 8])],
        [_vi("y", F, ["batch", 4, 8, 8])],
        [_w("b", 4), _w("w2", 4, 3, 1, 1)],
    )


def gather_shape_scalar() -> onnx.ModelProto:
    """Every exported transformer: seq = Gather(Shape(x), 1) is 0-d, then Unsqueeze/Concat/Reshape."""
    return make_model(
        [
            helper.make_node("Shape", ["x"], ["shape"], name="shape"),
            helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather_batch", axis=0),
            helper.make_node("Gather", ["shape", "one"], ["seq"], name="gather_seq", axis=0),
            helper.make_node("Unsqueeze", ["batch", "axes0"], ["b1"], name="unsqueeze_b"),
            helper.make_node("Unsqueeze", ["seq", "axes0"], ["s1"], name="unsqueeze_s"),
            helper.make_node("Concat", ["b1", "s1", "heads"], ["new_shape"], name="concat", axis=0),
            helper.make_node("Reshape", ["x", "new_shape"], ["y"], name="reshape"),
        ],
        [_vi("x", F, ["batch", "sequence", 8])],
        [_vi("y", F, ["batch", "sequence", 2, 4])],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array([0], np.int64), "axes0"),
            numpy_helper.from_array(np.array([2, 4], np.int64), "heads"),
        ],
    )


def comparisons() -> onnx.ModelProto:
    """A causal/attention mask as transformers builds it: GreaterOrEqual, LessOrEqual, Where."""
    return make_model(
        [
            helper.make_node("GreaterOrEqual", ["x", "z"], ["ge"], name="ge"),
            helper.make_node("LessOrEqual", ["x", "z"], ["le"], name="le"),
            helper.make_node("Greater", ["x", "z"], ["gt"], name="gt"),
            helper.make_node("Where", ["ge", "x", "neg"], ["a"], name="where_ge"),
            helper.make_node("Where", ["le", "a", "z"], ["b"], name="where_le"),
            helper.make_node("Where", ["gt", "b", "neg"], ["y"], name="where_gt"),
        ],
        [_vi("x", F, ["batch", 6]), _vi("z", F, ["batch", 6])],
        [_vi("y", F, ["batch", 6])],
        [numpy_helper.from_array(np.array(-5.0, np.float32), "neg")],
    )


def ceil_mode_pools() -> onnx.ModelProto:
    """GoogLeNet/SqueezeNet MaxPool and an AveragePool with ceil_mode=1 on a size that leaves a
    partial last window, with and without count_include_pad."""
    return make_model(
        [
            helper.make_node(
                "MaxPool",
                ["x"],
                ["m"],
                name="maxpool",
                kernel_shape=[3, 3],
                strides=[2, 2],
                ceil_mode=1,
            ),
            helper.make_node(
                "AveragePool",
                ["m"],
                ["a"],
                name="avgpool",
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                ceil_mode=1,
            ),
            helper.make_node(
                "AveragePool",
                ["m"],
                ["b"],
                name="avgpool_include_pad",
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                ceil_mode=1,
                count_include_pad=1,
            ),
            helper.make_node("Add", ["a", "b"], ["y"], name="add"),
        ],
        [_vi("x", F, ["batch", 2, 14, 14])],
        [_vi("y", F, ["batch", 2, 4, 4])],
    )


def hard_activations() -> onnx.ModelProto:
    """MobileNetV3's HardSwish and squeeze-excite HardSigmoid."""
    return make_model(
        [
            helper.make_node("HardSwish", ["x"], ["h"], name="hardswish"),
            helper.make_node("HardSigmoid", ["h"], ["g"], name="hardsigmoid", alpha=0.16666667),
            helper.make_node("Mul", ["h", "g"], ["y"], name="mul"),
        ],
        [_vi("x", F, ["batch", 16])],
        [_vi("y", F, ["batch", 16])],
    )


PATTERNS: dict[str, Callable[[], onnx.ModelProto]] = {
    "identity_fed_conv": identity_fed_conv,
    "gather_shape_scalar": gather_shape_scalar,
    "comparisons": comparisons,
    "ceil_mode_pools": ceil_mode_pools,
    "hard_activations": hard_activations,
}


def _backend(name: str) -> object:
    try:
        return get_backend(name)
    except BackendUnavailableError as exc:
        return pytest.param(name, marks=pytest.mark.skip(reason=str(exc)))


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    feeds = {}
    for value in model.graph.input:
        dims = [
            d.dim_value or (2 if d.dim_param == "batch" else 5)
            for d in value.type.tensor_type.shape.dim
        ]
        # integers as floats: comparisons then meet equal values too
        feeds[value.name] = np.round(RNG.standard_normal(dims) * 2).astype(np.float32)
    return feeds


@pytest.mark.parametrize("backend_name", ["torch", "jax"])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_exported_pattern_matches_onnxruntime(
    backend_name: str, pattern: str, tmp_path: Path
) -> None:
    try:
        backend = get_backend(backend_name)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    model = PATTERNS[pattern]()
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{pattern}.onnx"
    onnx.save(model, path)
    artifact = load_model(path)
    feeds = _feeds(model)
    expected = get_backend("onnxruntime").prepare(artifact, "cpu").run(feeds)
    assert backend.supports(artifact, "cpu").supported
    session = backend.prepare(artifact, "cpu")
    try:
        outputs = session.run(feeds)
    finally:
        session.close()
    for name, want in expected.items():
        assert outputs[name].shape == want.shape, name
        np.testing.assert_allclose(outputs[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_normalize_bypasses_identities_and_lifts_constants() -> None:
    model, done = normalize(identity_fed_conv())
    assert (done.constants_to_initializers, done.identities_removed) == (1, 4)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Conv", "Relu", "Add"]
    assert list(model.graph.node[0].input) == ["x", "w_const", "b"]
    assert "w_const" in {t.name for t in model.graph.initializer}
    onnx.checker.check_model(model, full_check=True)


def test_normalize_keeps_an_identity_that_is_a_graph_output() -> None:
    model = make_model(
        [helper.make_node("Identity", ["x"], ["y"], name="out")],
        [_vi("x", F, [2])],
        [_vi("y", F, [2])],
    )
    normalized, done = normalize(model)
    assert not done.changed and [n.op_type for n in normalized.graph.node] == ["Identity"]


def _conv_with_computed_weight() -> onnx.ModelProto:
    # the weight is a model input: onnx2torch's Conv reads weights from initializers only
    return make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv_from_input")],
        [_vi("x", F, [1, 3, 4, 4]), _vi("w", F, [2, 3, 1, 1])],
        [_vi("y", F, [1, 2, 4, 4])],
    )


def test_torch_names_the_node_it_cannot_convert(tmp_path: Path) -> None:
    pytest.importorskip("onnx2torch", reason="pip install 'crossinfer[torch]'")
    from crossinfer.backends.onnx_to_torch import convert

    with pytest.raises(UnsupportedNodeError) as info:
        convert(_conv_with_computed_weight())
    error = info.value
    assert (error.node, error.op_type, error.domain) == ("conv_from_input", "Conv", "")
    assert str(error).startswith("node 'conv_from_input' (op Conv, domain ai.onnx): onnx2torch: ")
    assert "'w' is not an initializer or constant" in str(error)
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_with_computed_weight(), path)
    with pytest.raises(CompileError, match=r"could not convert .*node 'conv_from_input' \(op Conv"):
        get_backend("torch").prepare(load_model(path), "cpu")


def test_jax_names_the_node_it_cannot_lower(tmp_path: Path) -> None:
    pytest.importorskip("jaxonnxruntime", reason="pip install 'crossinfer[jax]'")
    # MaxPool's second output (Indices) has no lowering
    model = make_model(
        [
            helper.make_node(
                "MaxPool", ["x"], ["y", "idx"], name="pool_with_indices", kernel_shape=[2, 2]
            )
        ],
        [_vi("x", F, [1, 1, 4, 4])],
        [_vi("y", F, [1, 1, 3, 3]), _vi("idx", I64, [1, 1, 3, 3])],
    )
    path = tmp_path / "pool.onnx"
    onnx.save(model, path)
    with pytest.raises(
        CompileError,
        match=r"node 'pool_with_indices' \(op MaxPool, domain ai.onnx\): .*output 1 \('idx'\)",
    ):
        get_backend("jax").prepare(load_model(path), "cpu")
