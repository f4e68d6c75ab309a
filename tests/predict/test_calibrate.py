"""Calibration: factors fitted from a synthetic results store come back, with their LODO error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model
from crossinfer.bench.result import BenchResult
from crossinfer.hardware.catalog import load_catalog
from crossinfer.model import load_model
from crossinfer.predict import calibrate_from_store, model_cost, predict_model
from crossinfer.predict.calibrate import observation
from crossinfer.predict.roofline import Scales
from crossinfer.store import ResultStore
from test_store import bench_result

TRUE = Scales("x86-cpu", {"conv": 3.0, "matmul": 1.5, "overhead": 1.0})


def _matmul_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.zeros((512, 512), dtype=np.float32), "W")
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512])],
        [w],
    )


def _conv_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.zeros((64, 64, 3, 3), dtype=np.float32), "W")
    return make_model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64, 28, 28])],
        [w],
    )


def _cpu(name: str, cores: int) -> dict[str, Any]:
    flags = ["avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"]
    return {
        "cpu": {
            "model": name,
            "vendor": "GenuineIntel",
            "logical_cores": cores,
            "isa_flags": flags,
        },
        "gpus": [],
    }


def _runs(paths: list[Path]) -> list[BenchResult]:
    """Offline runs whose throughput is what the roofline gives with the TRUE factors (+-1%)."""
    catalog = load_catalog()
    results = []
    wobble = iter([1.01, 0.99, 1.0, 1.005, 0.995, 1.0] * 10)
    for name, cores in (("Test Xeon A", 2), ("Test Xeon B", 4), ("Test Xeon C", 8)):
        for path in paths:
            artifact = load_model(path)
            cost = model_cost(artifact.load_proto())
            for precision in ("fp32", "int8"):
                for batch in (1, 8):
                    draft = bench_result(
                        model_source=str(path),
                        model_sha256=artifact.sha256,
                        backend="onnxruntime",
                        device="cpu",
                        precision=precision,
                        scenario="offline",
                        batch_size=batch,
                        settings={},
                        hardware=_cpu(name, cores),
                    )
                    obs, reason = observation(catalog, draft, cost)
                    assert obs is not None, reason
                    seconds = obs.predicted(TRUE) * next(wobble)
                    results.append(replace(draft, throughput=batch / seconds))
    return results


@pytest.fixture
def store(tmp_path: Path) -> Path:
    paths = []
    for name, model in (("mm.onnx", _matmul_model()), ("conv.onnx", _conv_model())):
        onnx.save(model, tmp_path / name)
        paths.append(tmp_path / name)
    results = _runs(paths)
    # one H100 run: its family has a single measured device
    h100 = {"cpu": {}, "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver_version": "1"}]}
    results.append(replace(results[0], device="cuda", hardware=h100, throughput=5000.0))
    # a GPU the catalog does not know, and a Server run: both are left out, with reasons
    unknown = {"cpu": {}, "gpus": [{"name": "Test GPU 9000", "driver_version": "1"}]}
    results.append(replace(results[0], device="cuda", hardware=unknown))
    results.append(replace(results[0], scenario="server"))
    unstable = replace(results[0].stability, stable=False, spread_pct=42.0)
    results.append(replace(results[0], stability=unstable, throughput=1.0))
    path = tmp_path / "store.sqlite"
    with ResultStore(path) as opened:
        opened.add_many(results)
    return path


def test_factors_fitted_from_the_store_come_back(store: Path) -> None:
    calibration = calibrate_from_store(store, load_catalog())
    cpu = calibration.scales_for("x86-cpu", "fp32")
    assert cpu.factor("conv") == pytest.approx(3.0, rel=0.1)
    assert cpu.factor("matmul") == pytest.approx(1.5, rel=0.1)
    # fitted per precision class: 3 devices x 2 models x 2 batches at FP32
    assert cpu.source == "fitted on 12 runs of 3 device(s)"
    assert calibration.scales_for("x86-cpu", "int8").factor("conv") == pytest.approx(3.0, rel=0.1)
    # leave one device out: the other two predict it about as well as the 1% noise put in
    # allows (the noise also moves the fit); the prior alone is off by 1.5-3x
    cpu_rows = [row for row in calibration.lodo if row.family.startswith("x86-cpu")]
    assert len(cpu_rows) == 24
    assert max(abs(row.error) for row in cpu_rows) < 0.05
    assert cpu.error.startswith("±") and "leave-one-device-out, 3 devices, 12 runs" in cpu.error
    # one H100 measured: other GPUs cannot be checked against anything
    assert calibration.scales_for("nvidia-gpu", "fp32").error.startswith("uncalibrated for other")
    assert calibration.scales_for("google-tpu", "bf16").error == "uncalibrated"
    assert len(calibration.skipped) == 3
    assert any("'Test GPU 9000' is not in the catalog" in s for s in calibration.skipped)
    assert any("server runs are not used" in s for s in calibration.skipped)
    assert any("unstable run (measurement windows spread 42%" in s for s in calibration.skipped)


def test_predictions_carry_their_family_error(store: Path, tmp_path: Path) -> None:
    catalog = load_catalog()
    calibration = calibrate_from_store(store, catalog)
    onnx.save(_conv_model(), tmp_path / "again.onnx")
    result = predict_model(
        load_model(tmp_path / "again.onnx"),
        catalog,
        hardware=["c7i.large", "tpu v5e"],
        calibration=calibration,
    )
    by_target = {(p.hardware, p.precision): p for p in result.predictions}
    cpu_fp32 = calibration.scales_for("x86-cpu", "fp32")
    assert by_target[("c7i.large", "fp32")].error == cpu_fp32.error
    assert by_target[("c7i.large", "int8")].error == calibration.scales_for("x86-cpu", "int8").error
    # bf16 was never measured on a CPU: its rows say so
    assert by_target[("c7i.large", "bf16")].error == "uncalibrated"
    assert by_target[("Google TPU v5e", "bf16")].error == "uncalibrated"
    assert set(by_target) == {
        ("c7i.large", "fp32"),
        ("c7i.large", "bf16"),
        ("c7i.large", "int8"),
        ("Google TPU v5e", "bf16"),
        ("Google TPU v5e", "int8"),
    }
    assert all(p.to_dict()["predicted"] for p in result.predictions)


def test_runs_of_a_busy_machine_are_left_out_and_named() -> None:
    catalog = load_catalog()
    artifact = load_model("zoo:mlp")
    cost = model_cost(artifact.load_proto())
    run = bench_result(
        model_source="zoo:mlp",
        model_sha256=artifact.sha256,
        device="cpu",
        precision="fp32",
        scenario="offline",
        settings={"threads": 2},
        hardware=_cpu("Test Xeon A", 2),
    )
    # its own 2 threads plus one more core's worth of work: over half the 2 cores busy
    found, reason = observation(catalog, replace(run, load_average=3.2), cost)
    assert found is None
    assert reason.startswith("busy machine (1-minute load average 3.2 on 2 core(s)")
    # its own threads alone, or no record at all: kept
    assert observation(catalog, replace(run, load_average=2.4), cost)[0] is not None
    assert observation(catalog, replace(run, load_average=None), cost)[0] is not None


def test_an_epyc_is_matched_to_its_core_generation() -> None:
    catalog = load_catalog()
    artifact = load_model("zoo:mlp")
    cost = model_cost(artifact.load_proto())

    def core(model: str, flags: list[str]) -> str:
        hardware = {
            "cpu": {"model": model, "vendor": "AuthenticAMD", "logical_cores": 2,
                    "isa_flags": flags},
            "gpus": [],
        }  # fmt: skip
        run = bench_result(model_source="zoo:mlp", model_sha256=artifact.sha256, device="cpu",
                           scenario="offline", settings={}, hardware=hardware)  # fmt: skip
        found, reason = observation(catalog, run, cost)
        assert found is not None, reason
        return found.device_name

    # the longest name wins: "AMD EPYC 9" also matches a 9R45, a Zen 5 part
    assert core("AMD EPYC 9R14 96-Core Processor", ["avx512f"]) == "AMD Zen 4 core x2"
    assert core("AMD EPYC 9R45 192-Core Processor", ["avx512f"]) == "AMD Zen 5 core x2"
    # a guest's generic name: VP2INTERSECT marks an AMD Zen 5, AVX-512 alone a Zen 4
    assert core("AMD EPYC Processor", ["avx512f", "avx512_vp2intersect"]) == "AMD Zen 5 core x2"
    assert core("AMD EPYC Processor", ["avx512f"]) == "AMD Zen 4 core x2"
