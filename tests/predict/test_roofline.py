"""The roofline: compute, memory, host-link and fallback bounds, on a catalog written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model
from crossinfer.errors import CatalogError
from crossinfer.hardware.catalog import load_catalog
from crossinfer.predict.cost import model_cost
from crossinfer.predict.roofline import (
    PRIOR_EFFICIENCY,
    PRIOR_MEMORY_EFFICIENCY,
    Scales,
    hardware_targets,
    predict_target,
)

_CATALOG = """
[[device]]
name = "Test Accelerator"
kind = "accelerator"
family = "test"
peak_tflops = { fp32 = 1.0, int8 = 4.0 }
memory_gb = 1
memory_bandwidth_gbs = 100
host_link_gbs = 10
kernel_overhead_us = 0
call_overhead_us = 0
unsupported_ops = ["Erf"]
source = "written by the test"

[[instance]]
name = "test.large"
provider = "test"
gpus = 2
gpu = "Test Accelerator"
price_per_hour = 7.2
price_date = "2026-12"
source = "the test"
"""


def _gemm(n: int, k: int, m: int, *, erf: bool = False) -> object:
    w = numpy_helper.from_array(np.zeros((k, m), dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y" if not erf else "h"], name="mm")]
    if erf:
        nodes.append(helper.make_node("Erf", ["h"], ["y"], name="erf"))
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, m])],
        [w],
    )


@pytest.fixture
def target(tmp_path: Path) -> object:
    path = tmp_path / "catalog.toml"
    path.write_text(_CATALOG)
    catalog = load_catalog(path)
    return hardware_targets(catalog, ["test accelerator"])[0]


def test_a_big_matmul_is_compute_bound_at_the_prior_efficiency(target: object) -> None:
    cost = model_cost(_gemm(512, 4096, 4096))  # type: ignore[arg-type]
    row = predict_target(cost, target, "fp32")  # type: ignore[arg-type]
    flops = 2 * 512 * 4096 * 4096
    compute_s = flops / (1e12 * PRIOR_EFFICIENCY["matmul"])
    link_s = (512 * 4096 + 512 * 4096) * 4 / 10e9  # input and output over the host link
    assert row.batch1_latency_ms == pytest.approx((compute_s + link_s) * 1e3, rel=1e-6)
    assert row.batch1_bound == "compute"
    assert row.calibration.startswith("uncalibrated")
    assert row.error == "uncalibrated"


def test_a_thin_matmul_is_memory_bound(target: object) -> None:
    cost = model_cost(_gemm(1, 4096, 4096))  # type: ignore[arg-type]
    row = predict_target(cost, target, "fp32")  # type: ignore[arg-type]
    moved = (4096 * 4096 + 4096 + 4096) * 4
    memory_s = moved / (100e9 * PRIOR_MEMORY_EFFICIENCY)
    link_s = (4096 + 4096) * 4 / 10e9
    assert row.batch1_latency_ms == pytest.approx((memory_s + link_s) * 1e3, rel=1e-6)
    assert row.batch1_bound == "memory"
    # INT8 moves a quarter of the bytes
    int8 = predict_target(cost, target, "int8")  # type: ignore[arg-type]
    assert int8.batch1_latency_ms == pytest.approx(row.batch1_latency_ms / 4, rel=1e-6)


def test_an_unsupported_op_goes_to_the_host_and_is_named(target: object) -> None:
    # a small matmul, then Erf over 1 M elements that must cross the link both ways
    cost = model_cost(_gemm(1024, 16, 1024, erf=True))  # type: ignore[arg-type]
    row = predict_target(cost, target, "fp32")  # type: ignore[arg-type]
    assert row.batch1_bound == "unsupported op on host (Erf)"
    assert row.batch1_latency_ms > 2 * 1024 * 1024 * 4 / 10e9 * 1e3
    assert any("Erf not run by Test Accelerator" in note for note in row.notes)


def test_best_batch_throughput_and_cost_per_million(target: object) -> None:
    cost = model_cost(_gemm(1, 4096, 4096))  # type: ignore[arg-type]
    row = predict_target(cost, target, "fp32")  # type: ignore[arg-type]
    # memory bound at batch 1; the weights are read once per batch, so batching pays
    assert row.best_batch > 1
    assert row.best_throughput > 1e3 / row.batch1_latency_ms
    # 7.2 $/h for two accelerators: 1 $/h each
    assert row.cost_per_million == pytest.approx(3.6 / 3600 / row.best_throughput * 1e6)
    assert "test.large / 2 accelerators" in row.price_source


def test_scales_multiply_their_term(target: object) -> None:
    cost = model_cost(_gemm(512, 4096, 4096))  # type: ignore[arg-type]
    plain = predict_target(cost, target, "fp32")  # type: ignore[arg-type]
    slower = predict_target(cost, target, "fp32", Scales("test", {"matmul": 2.0}, "fit", "±5%"))  # type: ignore[arg-type]
    link_ms = (512 * 4096 * 2) * 4 / 10e9 * 1e3
    assert slower.batch1_latency_ms - link_ms == pytest.approx(
        2 * (plain.batch1_latency_ms - link_ms), rel=1e-6
    )
    assert slower.error == "±5%"


def test_the_catalog_covers_the_devices_the_issue_names() -> None:
    names = [t.name for t in hardware_targets(load_catalog())]
    for wanted in (
        "H100", "H200", "A100", "L4", "T4", "TPU v4", "TPU v5e", "TPU v6e", "Inferentia2",
        "Trainium", "Groq", "Cloud AI 100", "Intel NPU", "Arc", "Ethos-N", "Ethos-U", "Versal",
    ):  # fmt: skip
        assert any(wanted in name for name in names), wanted
    catalog = load_catalog()
    cpu_instances = [i.name for i in catalog.instances if not i.gpus]
    assert cpu_instances and set(cpu_instances) <= set(names)
    for device in catalog.devices:
        assert device.source and device.date and device.family, device.name
        # a figure not from REFERENCE.md is flagged
        if "written from memory" in device.source:
            assert device.unconfirmed, device.name


def test_an_unknown_hardware_name_lists_the_known_ones() -> None:
    with pytest.raises(CatalogError, match=r"--hardware .tpu v9. matches no device.*known: NVIDIA"):
        hardware_targets(load_catalog(), ["tpu v9"])
