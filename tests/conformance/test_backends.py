"""Every installed backend on the same cases: single-op models and the zoo, against the reference.

Each skip is declared next to its reason, as onnx's backend test suite does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model
from crossinfer.backends.base import (
    Backend,
    Precision,
    SessionOptions,
    backend_entries,
    get_backend,
)
from crossinfer.check import default_tolerance, random_inputs
from crossinfer.check.parity import compare_outputs
from crossinfer.errors import BackendUnavailableError, InputError
from crossinfer.model import ModelArtifact, load_model

F = TensorProto.FLOAT
I64 = TensorProto.INT64
RNG = np.random.default_rng(7)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.5, name)


def _vi(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _unary(op: str, **attrs: object) -> onnx.ModelProto:
    return make_model(
        [helper.make_node(op, ["x"], ["y"], name=op.lower(), **attrs)],
        [_vi("x", F, ["batch", 6])],
        [_vi("y", F, ["batch", 6])],
    )


SINGLE_OPS: dict[str, Callable[[], onnx.ModelProto]] = {
    "relu": lambda: _unary("Relu"),
    "erf": lambda: _unary("Erf"),
    "sigmoid": lambda: _unary("Sigmoid"),
    "softmax": lambda: _unary("Softmax", axis=-1),
    "add_broadcast": lambda: make_model(
        [helper.make_node("Add", ["x", "b"], ["y"], name="add")],
        [_vi("x", F, ["batch", 3, 4])],
        [_vi("y", F, ["batch", 3, 4])],
        [_w("b", 4)],
    ),
    "matmul": lambda: make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [_vi("x", F, ["batch", 16])],
        [_vi("y", F, ["batch", 8])],
        [_w("w", 16, 8)],
    ),
    "conv": lambda: make_model(
        [
            helper.make_node(
                "Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]
            )
        ],
        [_vi("x", F, ["batch", 3, 9, 9])],
        [_vi("y", F, ["batch", 4, 5, 5])],
        [_w("w", 4, 3, 3, 3), _w("b", 4)],
    ),
    "layernorm": lambda: make_model(
        [
            helper.make_node(
                "LayerNormalization", ["x", "g", "b"], ["y"], name="ln", axis=-1, epsilon=1e-5
            )
        ],
        [_vi("x", F, ["batch", 5, 8])],
        [_vi("y", F, ["batch", 5, 8])],
        [_w("g", 8), _w("b", 8)],
    ),
    "gather_embedding": lambda: make_model(
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="gather", axis=0)],
        [_vi("ids", I64, ["batch", 7])],
        [_vi("y", F, ["batch", 7, 4])],
        [_w("table", 100, 4)],
    ),
    "reduce_transpose_reshape": lambda: make_model(
        [
            helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[0, 2, 1]),
            # opset 17 ReduceMean takes axes as an attribute (an input from opset 18)
            helper.make_node("ReduceMean", ["t"], ["m"], name="mean", axes=[2], keepdims=0),
            helper.make_node("Reshape", ["m", "shape"], ["y"], name="reshape"),
        ],
        [_vi("x", F, ["batch", 4, 6])],
        [_vi("y", F, ["batch", 6])],
        [
            numpy_helper.from_array(np.array([-1, 6], np.int64), "shape"),
        ],
    ),
    "argmax_int_output": lambda: make_model(
        [helper.make_node("ArgMax", ["x"], ["y"], name="argmax", axis=1, keepdims=0)],
        [_vi("x", F, ["batch", 10])],
        [_vi("y", I64, ["batch"])],
    ),
}

# Small zoo variants: tests run on a 2-core CI machine. Full-size models are in benchmarks/.
ZOO_CASES = [
    "zoo:mlp",
    "zoo:digits",
    "zoo:resnet18",
    "zoo:mobilenetv2",
    "zoo:bert-base?layers=2&seq=16",
]

# (backend, case) pairs known not to work, with the reason; none so far on this machine.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _installed_backends() -> list[object]:
    params: list[object] = []
    for entry in backend_entries():
        try:
            get_backend(entry.name)
        except BackendUnavailableError as exc:
            params.append(pytest.param(entry.name, marks=pytest.mark.skip(reason=str(exc))))
            continue
        params.append(entry.name)
    return params


BACKENDS = _installed_backends()


@pytest.fixture(scope="module")
def single_op_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("single-op")
    for name, build in SINGLE_OPS.items():
        onnx.save(build(), path / f"{name}.onnx")
    return path


def _run_and_compare(backend_name: str, artifact: ModelArtifact, batch: int) -> None:
    case = (backend_name, artifact.source)
    if case in KNOWN_FAILURES:
        pytest.skip(KNOWN_FAILURES[case])
    feeds = random_inputs(artifact.inputs, batch=batch, seed=3)
    reference = get_backend("reference").prepare(artifact, "cpu").run(feeds)
    backend: Backend = get_backend(backend_name)
    assert backend.supports(artifact, "cpu").supported
    session = backend.prepare(artifact, "cpu", SessionOptions(precision=Precision.FP32, threads=2))
    try:
        outputs = session.run(feeds)
        placement = session.placement()
    finally:
        session.close()
    assert set(outputs) == {o.name for o in artifact.outputs}
    for comparison in compare_outputs(outputs, reference, default_tolerance(Precision.FP32)):
        assert comparison.passed, f"{backend_name} on {artifact.source}: {comparison.reason}"
        assert comparison.shape[0] == batch
    assert placement is not None and len(placement.node_devices) > 0
    assert placement.fallback_count == 0 and placement.unsupported_ops == ()


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("case", sorted(SINGLE_OPS))
def test_single_op(backend_name: str, case: str, single_op_dir: Path) -> None:
    _run_and_compare(backend_name, load_model(single_op_dir / f"{case}.onnx"), batch=3)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("source", ZOO_CASES)
def test_zoo_model(backend_name: str, source: str) -> None:
    _run_and_compare(backend_name, load_model(source), batch=2)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_wrong_inputs_are_refused_with_the_input_named(
    backend_name: str, single_op_dir: Path
) -> None:
    artifact = load_model(single_op_dir / "conv.onnx")
    session = get_backend(backend_name).prepare(artifact, "cpu")
    good = np.zeros((1, 3, 9, 9), np.float32)
    with pytest.raises(
        InputError,
        match=r"input 'x' expects FLOAT32 of shape \[batch,3,9,9\], got FLOAT64 \[1, 3, 9, 9\]",
    ):
        session.run({"x": good.astype(np.float64)})
    with pytest.raises(
        InputError, match=r"input 'x' expects shape \[batch,3,9,9\] \(float32\), got \[1, 3, 9\]"
    ):
        session.run({"x": good[:, :, :, 0]})
    with pytest.raises(InputError, match=r"missing input\(s\) 'x'; unknown input\(s\) 'pixels'"):
        session.run({"pixels": good})
    session.close()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_unknown_device_is_refused(backend_name: str, linear_path: Path) -> None:
    backend = get_backend(backend_name)
    compat = backend.supports(load_model(linear_path), "quantum")
    assert not compat.supported and compat.reason


def test_openvino_reports_the_precision_that_ran(linear_path: Path) -> None:
    pytest.importorskip(
        "openvino", reason="openvino not installed: pip install 'crossinfer[openvino]'"
    )
    artifact = load_model(linear_path)
    backend = get_backend("openvino")
    fp32 = backend.prepare(artifact, "cpu", SessionOptions(precision=Precision.FP32))
    info = fp32.describe()
    assert info["inference_precision_hint"] == "f32"
    assert set(info["runtime_precisions"]) == {"f32"}
    fp32.close()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_unknown_op_is_named_in_the_compile_error(backend_name: str, tmp_path: Path) -> None:
    from crossinfer.errors import CompileError

    # a custom-domain op that no runtime has a kernel or conversion rule for
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="custom_relu", domain="com.example")],
        [_vi("x", F, [2])],
        [_vi("y", F, [2])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    artifact = load_model(path)
    backend = get_backend(backend_name)
    compat = backend.supports(artifact, "cpu")
    if compat.supported:
        with pytest.raises(CompileError) as info:
            backend.prepare(artifact, "cpu")
        unsupported = info.value.unsupported_ops
    else:
        unsupported = compat.unsupported_ops
    assert unsupported == ("com.example:Relu",)


def test_openvino_auto_reports_the_device_it_picked(linear_path: Path) -> None:
    pytest.importorskip(
        "openvino", reason="openvino not installed: pip install 'crossinfer[openvino]'"
    )
    session = get_backend("openvino").prepare(load_model(linear_path), "auto")
    info = session.describe()
    placement = session.placement()
    assert info["execution_devices"] == ["CPU"]
    assert placement.primary == "CPU" and set(placement.node_devices.values()) == {"CPU"}
    session.close()


def test_openvino_bf16_is_what_its_cpu_default_would_silently_give() -> None:
    """On AVX512_BF16/AMX CPUs OpenVINO picks BF16 unasked: FP32 parity needs the f32 hint."""
    pytest.importorskip(
        "openvino", reason="openvino not installed: pip install 'crossinfer[openvino]'"
    )
    import openvino as ov

    if str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")) not in (
        "bf16",
        "<Type: 'bfloat16'>",
    ):
        pytest.skip("this CPU's OpenVINO default precision is not BF16 (no AVX512_BF16 or AMX)")
    artifact = load_model("zoo:resnet18")
    feeds = random_inputs(artifact.inputs, batch=1, seed=0)
    reference = get_backend("reference").prepare(artifact, "cpu").run(feeds)
    session = get_backend("openvino").prepare(
        artifact, "cpu", SessionOptions(precision=Precision.BF16)
    )
    outputs = session.run(feeds)
    assert session.describe()["runtime_precisions"].get("bf16", 0) > 0
    (as_bf16,) = compare_outputs(outputs, reference, default_tolerance(Precision.BF16))
    (as_fp32,) = compare_outputs(outputs, reference, default_tolerance(Precision.FP32))
    assert as_bf16.passed, as_bf16.reason
    assert not as_fp32.passed and as_fp32.max_abs_error > 1e-3
