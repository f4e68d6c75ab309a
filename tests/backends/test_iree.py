"""The iree backend on llvm-cpu, module caching, and cross-compiling for GPUs that are not here.

iree-compile is slow (BERT-2L about 9 s here): sessions are shared per module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import make_model
from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.check import compare_outputs, default_tolerance, random_inputs
from crossinfer.errors import CompileError, DeviceUnavailableError, InputError, UsageError
from crossinfer.model import ModelArtifact, load_model
from crossinfer.zoo import zoo_dataset

iree = pytest.importorskip("crossinfer.backends.iree", reason="pip install 'crossinfer[iree]'")
ireert = pytest.importorskip("iree.runtime")
BERT = "zoo:bert-base?layers=2&seq=32"


@pytest.fixture(scope="module")
def mlp() -> ModelArtifact:
    return load_model("zoo:mlp")


@pytest.fixture(scope="module")
def mlp_session(mlp: ModelArtifact):  # type: ignore[no-untyped-def]
    session = iree.IreeBackend().prepare(mlp, "cpu")
    yield session
    session.close()


def _passes(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], p: Precision) -> None:
    for comparison in compare_outputs(outputs, reference, default_tolerance(p)):
        assert comparison.passed, f"{p.value} {comparison.name}: {comparison.reason}"


def test_bert_matches_the_reference_at_fp32() -> None:
    artifact = load_model(BERT)
    feeds = random_inputs(artifact.inputs, batch=2, seed=5)
    session = iree.IreeBackend().prepare(artifact, "cpu")
    outputs = session.run(feeds)
    _passes(outputs, get_backend("reference").prepare(artifact, "cpu").run(feeds), Precision.FP32)
    (module,) = session.describe()["modules"]
    assert module["shapes"]["input_ids"] == [2, 32] and module["compile_s"] > 0
    assert "--iree-llvmcpu-target-cpu=host" in session.describe()["compile_flags"]
    session.close()


def test_mlp_matches_the_reference_and_caches_one_module_per_shape(mlp, mlp_session) -> None:  # type: ignore[no-untyped-def]
    reference = get_backend("reference").prepare(mlp, "cpu")
    for batch in (1, 4, 1):
        feeds = random_inputs(mlp.inputs, batch=batch, seed=batch)
        _passes(mlp_session.run(feeds), reference.run(feeds), Precision.FP32)
    shapes = [m.shapes["features"] for m in mlp_session.modules]
    assert shapes == [[1, 784], [4, 784]]
    placement = mlp_session.placement()
    assert set(placement.node_devices.values()) == {"cpu"} and placement.fallback_count == 0


def test_a_second_session_reuses_the_cached_module(mlp, mlp_session, zoo_cache) -> None:  # type: ignore[no-untyped-def]
    feeds = random_inputs(mlp.inputs, batch=4, seed=0)
    mlp_session.run(feeds)
    first = next(m for m in mlp_session.modules if m.shapes["features"] == [4, 784])
    path = Path(first.path)
    assert path.parent == zoo_cache / "iree" and path.is_file()
    written = path.stat().st_mtime_ns
    again = iree.IreeBackend().prepare(mlp, "cpu")
    again.run(feeds)
    (module,) = again.modules
    assert module.cache == "hit" and module.path == first.path and module.compile_s == 0
    assert path.stat().st_mtime_ns == written
    # other flags are another module
    other = iree.IreeBackend().prepare(
        mlp, "cpu", SessionOptions(extra={"--iree-global-opt-use-im2col-for-convs": "false"})
    )
    other.run(feeds)
    assert other.modules[0].cache == "miss" and other.modules[0].path != first.path


def test_bf16_demotes_matmul_inputs(mlp) -> None:  # type: ignore[no-untyped-def]
    feeds = random_inputs(mlp.inputs, batch=3, seed=1)
    session = iree.IreeBackend().prepare(mlp, "cpu", SessionOptions(precision=Precision.BF16))
    outputs = session.run(feeds)
    reference = get_backend("reference").prepare(mlp, "cpu").run(feeds)
    _passes(outputs, reference, Precision.BF16)
    (fp32_check,) = compare_outputs(outputs, reference, default_tolerance(Precision.FP32))
    assert not fp32_check.passed  # it really ran BF16
    assert (
        "--iree-global-opt-demote-contraction-inputs-type=bf16"
        in session.describe()["compile_flags"]
    )


def test_digits_predictions_match_onnxruntime() -> None:
    dataset = zoo_dataset("zoo:digits")
    assert dataset is not None
    artifact = load_model("zoo:digits")
    ours = iree.IreeBackend().prepare(artifact, "cpu").run(dataset.inputs)
    theirs = get_backend("onnxruntime").prepare(artifact, "cpu").run(dataset.inputs)
    name = artifact.outputs[0].name
    np.testing.assert_array_equal(ours[name].argmax(axis=1), theirs[name].argmax(axis=1))
    assert (ours[name].argmax(axis=1) == dataset.labels).mean() > 0.9


def test_bad_inputs_are_refused_with_the_input_named(mlp, mlp_session) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=r"input 'features' expects FLOAT32"):
        mlp_session.run({"features": np.zeros((1, 784), np.float64)})
    with pytest.raises(InputError, match=r"input 'features' expects shape \[batch,784\]"):
        mlp_session.run({"features": np.zeros((1, 783), np.float32)})


@pytest.mark.parametrize(
    ("target_backend", "extra", "marker"),
    [
        ("cuda", {}, b"cuda"),  # sm_80 PTX by default: IREE 3.13 cannot target sm_90 itself
        ("vulkan-spirv", {"--iree-vulkan-target": "ampere"}, b"vulkan"),
    ],
)
def test_cross_compiles_for_a_gpu_that_is_not_here(  # type: ignore[no-untyped-def]
    mlp, tmp_path, target_backend, extra, marker
) -> None:
    out = iree.compile_for(
        mlp, target_backend, tmp_path / "mlp.vmfb", shapes={"features": [8, 784]}, extra=extra
    )
    data = out.read_bytes()
    # a VM module that loads (no device needed) and holds an executable for that target
    module = ireert.VmModule.copy_buffer(ireert.VmInstance(), data)
    assert "mlp" in module.function_names
    assert marker in data.lower()


def test_compile_for_needs_sizes_for_symbolic_dims(mlp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=r"input 'features' has shape \[batch,784\]"):
        iree.compile_for(mlp, "llvm-cpu", tmp_path / "x.vmfb")


def test_compile_flags_defaults_precision_and_overrides() -> None:
    flags = iree.compile_flags("llvm-cpu", Precision.FP16, {"--iree-llvmcpu-target-cpu": "znver4"})
    assert "--iree-llvmcpu-target-cpu=host" not in flags
    assert "--iree-llvmcpu-target-cpu=znver4" in flags
    assert "--iree-global-opt-demote-contraction-inputs-type=f16" in flags
    assert "--iree-global-opt-use-im2col-for-convs" in flags
    assert "--iree-opt-data-tiling" not in flags  # it breaks demoted convolutions
    assert "--iree-opt-data-tiling" in iree.compile_flags("llvm-cpu")
    assert iree.cuda_target((9, 0)) == "sm_80" and iree.cuda_target((8, 6)) == "sm_86"
    assert iree.cuda_target(None) == "sm_80"
    with pytest.raises(UsageError, match="metal"):
        iree.compile_flags("metal")


def test_devices_without_a_driver_are_unavailable_with_a_reason(mlp) -> None:  # type: ignore[no-untyped-def]
    backend = iree.IreeBackend()
    devices = {d.name: d for d in backend.devices()}
    assert devices["cpu"].available
    assert set(devices) == {"cpu", "cuda", "vulkan", "hip"}
    for name, device in devices.items():
        if not device.available:
            assert device.reason
            with pytest.raises(DeviceUnavailableError, match="compile_for"):
                backend.prepare(mlp, name)
    assert not backend.supports(mlp, "npu").supported


def test_custom_domain_ops_are_refused_not_run_as_the_standard_op(tmp_path: Path) -> None:
    # IREE's importer drops the domain: com.example:Relu would silently run as onnx Relu
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="custom", domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, tmp_path / "custom.onnx")
    artifact = load_model(tmp_path / "custom.onnx")
    assert iree.custom_domain_ops(model) == ("com.example:Relu",)
    with pytest.raises(CompileError, match="outside the standard ONNX domain"):
        iree.compile_for(artifact, "llvm-cpu", tmp_path / "custom.vmfb")


def test_check_runs_the_iree_backend_in_its_child_process() -> None:
    from crossinfer.backends.base import Target
    from crossinfer.check import Verdict, check_model

    artifact = load_model("zoo:digits")
    report = check_model(
        artifact,
        targets=[Target("iree", "cpu")],
        feeds=random_inputs(artifact.inputs, batch=2, seed=0),
    )
    row = report.row("iree:cpu")
    assert row.verdict is Verdict.PASS, row.reason
    # described after prepare, before the first run compiled the batch-2 module
    assert "--iree-llvmcpu-target-cpu=host" in row.session["compile_flags"]
    assert row.first_run_s is not None and row.run_s is not None
