"""Prometheus metrics for `crossinfer serve`, under Triton's names, read at scrape time.

Nothing is counted on the request path: each scrape reads the batchers' statistics (which they
keep anyway for the statistics endpoint), the host's CPU and memory (psutil) and NVIDIA GPUs
(NVML, where present). Triton's counters keep their exact names (no ``_total`` suffix), so
dashboards written for Triton work unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from crossinfer.hardware.nvml import Nvml, open_nvml
from crossinfer.serve.events import log_event
from crossinfer.serve.repository import ServedModel

__all__ = ["CONTENT_TYPE", "ServerMetrics", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (metric, help, stat in BatcherStats.to_dict()["inference_stats"]); durations in microseconds
_DURATIONS = (
    ("nv_inference_request_duration_us", "Cumulative duration of successful requests", "request"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration", "queue"),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration (batch assembly)",
        "compute_input",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration (the runtime)",
        "compute_infer",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration (splitting the batch)",
        "compute_output",
    ),
)


class ServerMetrics:
    """The Triton-named model metrics plus host CPU/GPU metrics, as Prometheus text."""

    def __init__(self, models: Callable[[], Sequence[ServedModel]]) -> None:
        self._models = models
        self._standard = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._standard)
        PlatformCollector(registry=self._standard)
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first reading is always 0; start the interval now
        psutil.cpu_percent(None)
        self._nvml: Any = None  # the pynvml module while NVML is open
        self._opened: Nvml | None = None
        self._gpus: list[Any] = []
        self._init_nvml()

    def _init_nvml(self) -> None:
        opened = open_nvml()
        if opened.lib is None:
            # no driver, no GPU, no pynvml: GPU metrics are simply absent
            log_event("gpu_metrics_unavailable", logging.DEBUG, reason=opened.reason)
            return
        try:
            lib = opened.lib
            self._gpus = [
                lib.nvmlDeviceGetHandleByIndex(i) for i in range(lib.nvmlDeviceGetCount())
            ]
        except Exception as exc:
            opened.close()
            log_event("gpu_metrics_unavailable", logging.DEBUG, reason=f"NVML query failed: {exc}")
            return
        self._nvml, self._opened = opened.lib, opened

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None
        self._nvml = None

    def render(self) -> bytes:
        """The whole exposition: Triton's families first, then process and platform metrics."""
        families = [*self.model_families(), *self.cpu_families(), *self.gpu_families()]
        return render_metrics(families) + generate_latest(self._standard)

    # --- families -----------------------------------------------------------------------------

    def model_families(self) -> list[Metric]:
        labels = ["model", "version"]
        success = Metric(
            "nv_inference_request_success", "Number of successful inference requests", "counter"
        )
        failure = Metric(
            "nv_inference_request_failure", "Number of failed inference requests", "counter"
        )
        count = Metric(
            "nv_inference_count", "Number of inferences performed (batch rows)", "counter"
        )
        execs = Metric("nv_inference_exec_count", "Number of model executions (batches)", "counter")
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution",
            labels=labels,
        )
        durations = [Metric(name, doc, "counter") for name, doc, _ in _DURATIONS]
        batches = Metric(
            "crossinfer_batch_executions",
            "Model executions per batch size: is batching happening?",
            "counter",
        )
        for model in self._models():
            stats = model.batcher.stats()
            key = {"model": model.name, "version": model.version}
            success.add_sample(success.name, key, stats.success.count)
            for reason in ("REJECTED", "CANCELED", "BACKEND", "TIMEOUT", "OTHER"):
                value = stats.failures.get(reason, 0)
                failure.add_sample(failure.name, {**key, "reason": reason}, value)
            count.add_sample(count.name, key, stats.inference_count)
            execs.add_sample(execs.name, key, stats.execution_count)
            pending.add_metric([model.name, model.version], stats.pending)
            ns = {
                "request": stats.success.ns,  # successful requests, as Triton counts them
                "queue": stats.queue.ns,
                "compute_input": stats.compute_input.ns,
                "compute_infer": stats.compute_infer.ns,
                "compute_output": stats.compute_output.ns,
            }
            for family, (_, _, stat) in zip(durations, _DURATIONS, strict=True):
                family.add_sample(family.name, key, ns[stat] // 1000)
            for size, runs in stats.executions_by_batch_size().items():
                batches.add_sample(batches.name, {**key, "batch_size": str(size)}, runs)
        return [success, failure, count, execs, pending, *durations, batches]

    def cpu_families(self) -> list[Metric]:
        memory = psutil.virtual_memory()
        util = GaugeMetricFamily(
            "nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0] since the last scrape"
        )
        util.add_metric([], psutil.cpu_percent(None) / 100.0)
        total = GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes")
        total.add_metric([], memory.total)
        used = GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes")
        used.add_metric([], memory.total - memory.available)
        rss = GaugeMetricFamily(
            "crossinfer_process_memory_rss_bytes", "Resident memory of this server process"
        )
        rss.add_metric([], self._process.memory_info().rss)
        return [util, total, used, rss]

    def gpu_families(self) -> list[Metric]:
        if self._nvml is None:
            return []
        nvml = self._nvml
        label = ["gpu_uuid"]
        util = GaugeMetricFamily(
            "nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=label
        )
        total = GaugeMetricFamily(
            "nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=label
        )
        used = GaugeMetricFamily(
            "nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=label
        )
        power = GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts", labels=label)
        limit = GaugeMetricFamily(
            "nv_gpu_power_limit", "GPU power management limit in watts", labels=label
        )
        energy = Metric(
            "nv_energy_consumption",
            "GPU energy consumption in joules since the driver loaded",
            "counter",
        )
        for handle in self._gpus:
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            for family, read in (
                (util, lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0),
                (total, lambda h: nvml.nvmlDeviceGetMemoryInfo(h).total),
                (used, lambda h: nvml.nvmlDeviceGetMemoryInfo(h).used),
                (power, lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                (limit, lambda h: nvml.nvmlDeviceGetPowerManagementLimit(h) / 1000.0),
            ):
                value = _nvml_read(nvml, read, handle)
                if value is not None:
                    family.add_metric([uuid], value)
            joules = _nvml_read(
                nvml, lambda h: nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0, handle
            )
            if joules is not None:
                energy.add_sample(energy.name, {"gpu_uuid": uuid}, joules)
        return [util, total, used, power, limit, energy]


def _nvml_read(nvml: Any, read: Callable[[Any], float], handle: Any) -> float | None:
    """One NVML reading, or None where the GPU does not support it (a missing sample, not 0)."""
    try:
        return float(read(handle))
    except nvml.NVMLError:
        return None


def render_metrics(families: Iterable[Metric]) -> bytes:
    """Prometheus text format 0.0.4 with each family's own name (counters keep no ``_total``)."""
    lines: list[str] = []
    for family in families:
        kind = "untyped" if family.type == "unknown" else family.type
        lines.append(f"# HELP {family.name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {family.name} {kind}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sample.labels.items())
            text = f"{sample.name}{{{labels}}}" if labels else sample.name
            lines.append(f"{text} {_number(sample.value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))
