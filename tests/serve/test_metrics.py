"""Metrics rendering: Triton's exact names, and the NVML path (a fake NVML: CI has no GPU)."""

from __future__ import annotations

import re
import types
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from crossinfer.serve.metrics import ServerMetrics, render_metrics


class FakeNvmlError(Exception):
    pass


def fake_nvml() -> Any:
    """pynvml's calls for one GPU; the power limit is unsupported, as on some boards."""

    def unsupported(handle: object) -> float:
        raise FakeNvmlError("Not Supported")

    return types.SimpleNamespace(
        NVMLError=FakeNvmlError,
        nvmlDeviceGetUUID=lambda h: b"GPU-1234",  # older pynvml answers bytes
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=37),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 << 30, used=3 << 30),
        nvmlDeviceGetPowerUsage=lambda h: 71_500,  # milliwatts
        nvmlDeviceGetPowerManagementLimit=unsupported,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: 5_000_000,  # millijoules
        nvmlShutdown=lambda: None,
    )


def samples(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+(?:\{[^}]*\})?) (\S+)", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def test_gpu_metrics_from_nvml_in_tritons_units() -> None:
    metrics = ServerMetrics(list)
    metrics._nvml, metrics._gpus = fake_nvml(), [object()]
    text = render_metrics(metrics.gpu_families()).decode()
    assert list(text_string_to_metric_families(text))
    got = samples(text)
    label = '{gpu_uuid="GPU-1234"}'
    assert got[f"nv_gpu_utilization{label}"] == 0.37
    assert got[f"nv_gpu_memory_total_bytes{label}"] == 80 << 30
    assert got[f"nv_gpu_memory_used_bytes{label}"] == 3 << 30
    assert got[f"nv_gpu_power_usage{label}"] == 71.5
    assert got[f"nv_energy_consumption{label}"] == 5000.0
    assert f"nv_gpu_power_limit{label}" not in got  # unsupported: absent, never a made-up 0
    metrics.close()


def test_no_gpu_means_no_gpu_families_and_the_rest_still_renders() -> None:
    metrics = ServerMetrics(list)
    metrics._nvml = None
    assert metrics.gpu_families() == []
    text = metrics.render().decode()
    assert "nv_cpu_memory_total_bytes " in text and "process_cpu_seconds_total" in text
    assert list(text_string_to_metric_families(text))


def test_render_keeps_counter_names_and_escapes_labels() -> None:
    counter = Metric("nv_inference_count", "Number of inferences", "counter")
    counter.add_sample("nv_inference_count", {"model": 'we"ird\\name', "version": "1"}, 12)
    gauge = GaugeMetricFamily("nv_cpu_utilization", "CPU\nutilization")
    gauge.add_metric([], 0.25)
    text = render_metrics([counter, gauge]).decode()
    assert "# TYPE nv_inference_count counter\n" in text
    assert 'nv_inference_count{model="we\\"ird\\\\name",version="1"} 12\n' in text
    assert "# HELP nv_cpu_utilization CPU\\nutilization\n" in text
    assert "nv_cpu_utilization 0.25\n" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["nv_inference_count"].samples[0].labels["model"] == 'we"ird\\name'
