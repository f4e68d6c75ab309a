"""The typed values a benchmark run produces: latency statistics, stability, energy, one result row.

Every stage that stores, compares or reports benchmark figures uses these and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SCENARIOS = ("singlestream", "multistream", "server", "offline")


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles of one run, in milliseconds (per query: a MultiStream query is 8 samples)."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    min_ms: float
    max_ms: float


@dataclass(frozen=True)
class Stability:
    """Whether consecutive measurement windows agreed, as perf_analyzer decides it."""

    stable: bool
    window_throughputs: tuple[float, ...]  # samples/s per window, in order
    spread_pct: float  # (max - min) / mean of the last windows compared, in percent
    threshold_pct: float  # the agreement asked for
    note: str = ""


@dataclass(frozen=True)
class EnergyReading:
    """Energy over the run, with how it was measured; None means not measured (never a TDP guess)."""

    joules: float | None
    joules_per_inference: float | None
    method: str  # "NVML total energy counter (GPU 0)", "RAPL package-0", "not measured: <why>"


@dataclass(frozen=True)
class BenchResult:
    """One scenario at one setting on one backend x device: the row the results store keeps."""

    model_source: str
    model_sha256: str
    backend: str
    device: str
    precision: str
    scenario: str  # one of SCENARIOS
    batch_size: int
    settings: Mapping[str, Any]  # threads, streams, instances, performance hint, ...
    latency: LatencyStats
    throughput: float  # samples/s
    server_qps: float | None  # Server: the highest target QPS that met the latency bound
    target_latency_ms: float | None  # Server's p99 bound; MultiStream/SingleStream: None
    first_inference_ms: float
    load_s: float  # session creation (compile) time, apart from the first inference
    peak_rss_mb: float
    peak_device_mem_mb: float | None
    energy: EnergyReading
    loadgen_result: str  # "VALID" or "INVALID" from mlperf_log_summary.txt
    loadgen_log_dir: str
    compliant: bool  # False for --quick runs: "not a compliant run"
    stability: Stability
    hardware: Mapping[str, Any]  # fingerprint: CPU model and flags, GPU name and driver
    runtime_versions: Mapping[str, str]
    crossinfer_version: str
    created_at: str  # ISO 8601, UTC
    notes: tuple[str, ...] = field(default=())
    # where the samples were staged: numpy, pinned (copied per batch), device (resident: the
    # figure measures the device, not the system)
    input_placement: str = "numpy"
    input_staging: Mapping[str, Any] = field(default_factory=dict)  # dtypes, casts, fallbacks
    # batch size -> its first run before LoadGen started (compile or capture included), seconds
    warmup_s: Mapping[str, float] = field(default_factory=dict)
    # the machine's 1-minute load average when the run ended (None: not recorded); the run's
    # own threads count in it. Calibration (`crossinfer predict`) leaves out busy machines' runs
    load_average: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["settings"] = dict(self.settings)
        data["input_staging"] = dict(self.input_staging)
        data["warmup_s"] = dict(self.warmup_s)
        data["hardware"] = dict(self.hardware)
        data["runtime_versions"] = dict(self.runtime_versions)
        return data
