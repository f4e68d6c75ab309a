"""What one LoadGen run is asked to do, and how it is told to LoadGen (its TestSettings).

`LoadGenSettings` is ours; `to_test_settings` turns it, with a `Calibration` when LoadGen must be
told what to expect, into LoadGen's own TestSettings and a record of what it was told.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from crossinfer.bench.result import SCENARIOS
from crossinfer.errors import UsageError

__all__ = [
    "EARLY_STOPPING_MIN_QUERIES",
    "QUICK_QUERY_BUDGET_S",
    "Calibration",
    "LoadGenSettings",
    "quick_settings",
    "to_test_settings",
]

_LOADGEN_NAMES = {
    "singlestream": "SingleStream",
    "multistream": "MultiStream",
    "server": "Server",
    "offline": "Offline",
}
# The fewest queries with which LoadGen 6.0's early stopping can call a run VALID when no query
# is slow (its summary says so: SingleStream p90 64, MultiStream p99 662, Server p99 459).
QUICK_QUERY_BUDGET_S = 12.0
EARLY_STOPPING_MIN_QUERIES = {"singlestream": 64, "multistream": 662, "server": 459, "offline": 1}
# LoadGen builds every query of a run up front (2x what the expected latency predicts), a few
# hundred bytes each: this caps that memory, at the price of an INVALID "ran out of generated
# queries" run when a SUT is faster than min_duration / this many queries.
_MAX_GENERATED_QUERIES = 1_000_000


@dataclass(frozen=True)
class LoadGenSettings:
    """What one LoadGen run is asked to do; None fields are measured or left to LoadGen."""

    scenario: str  # one of result.SCENARIOS
    quick: bool = False  # a short run: the caller must label it "not a compliant run"
    min_duration_ms: int = 600_000  # MLPerf's official run length
    min_query_count: int | None = None  # None: the scenario's early-stopping minimum
    max_query_count: int | None = None
    max_duration_ms: int | None = None  # LoadGen stops issuing after this (an INVALID run)
    target_qps: float | None = None  # Server: scheduled QPS; Offline: expected QPS
    expected_latency_ms: float | None = None  # SingleStream/MultiStream: per query
    server_target_latency_ms: float = 10.0  # p99 bound (ResNet-50 15, BERT 130)
    server_max_outstanding: int | None = None  # Server: LoadGen ends early past this backlog
    multistream_samples_per_query: int = 8
    batch_size: int = 1
    instances: int = 1  # worker threads for Server and Offline
    max_queue_delay_ms: float = 1.0  # Server: how long a worker waits to fill a batch
    stability_windows: int = 5  # equal windows over the run for the throughput stability check
    # quick runs: lower min_query_count (below early stopping's minimum, if need be) so that a
    # slow model's run takes about this long; None keeps the minimum whatever it costs
    query_budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise UsageError(
                f"unknown scenario '{self.scenario}': choose one of {', '.join(SCENARIOS)}"
            )
        positive = {
            "batch_size": self.batch_size,
            "instances": self.instances,
            "multistream_samples_per_query": self.multistream_samples_per_query,
            "stability_windows": self.stability_windows,
            "min_duration_ms": self.min_duration_ms,
        }
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        if self.target_qps is not None and self.target_qps <= 0:
            raise UsageError(f"target_qps must be positive, got {self.target_qps}")
        if self.max_queue_delay_ms < 0:
            raise UsageError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")

    @property
    def loadgen_scenario(self) -> str:
        return _LOADGEN_NAMES[self.scenario]

    @property
    def effective_min_query_count(self) -> int:
        if self.min_query_count is not None:
            return self.min_query_count
        return EARLY_STOPPING_MIN_QUERIES[self.scenario]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def quick_settings(
    scenario: str,
    *,
    batch_size: int = 1,
    instances: int = 1,
    target_qps: float | None = None,
    min_duration_ms: int = 1000,
) -> LoadGenSettings:
    """A short run for a small CI machine; not a compliant MLPerf run, and must be labelled so.

    One second, and just enough queries for early stopping to be able to say VALID; Offline
    issues about one second of samples at the measured throughput.
    """
    return LoadGenSettings(
        scenario=scenario,
        quick=True,
        min_duration_ms=min_duration_ms,
        min_query_count=EARLY_STOPPING_MIN_QUERIES[scenario],
        target_qps=target_qps,
        batch_size=batch_size,
        instances=instances,
        query_budget_s=QUICK_QUERY_BUDGET_S,
    )


@dataclass(frozen=True)
class Calibration:
    """A short direct measurement that tells LoadGen what to expect (it pre-generates queries)."""

    latency_ns: float  # median single-sample run
    batch_latency_ns: float  # median run at batch_size
    batch_size: int
    throughput: float  # samples/s at batch_size with `instances` threads
    instances: int


def to_test_settings(
    lg: ModuleType, settings: LoadGenSettings, calibration: Calibration | None
) -> tuple[Any, dict[str, Any]]:
    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, settings.loadgen_scenario)
    ts.mode = lg.TestMode.PerformanceOnly
    ts.min_duration_ms = settings.min_duration_ms
    ts.min_query_count = settings.effective_min_query_count
    told: dict[str, Any] = {
        "scenario": settings.loadgen_scenario,
        "mode": "PerformanceOnly",
        "min_duration_ms": settings.min_duration_ms,
        "min_query_count": settings.effective_min_query_count,
    }
    if settings.max_query_count is not None:
        ts.max_query_count = settings.max_query_count
        told["max_query_count"] = settings.max_query_count
    if settings.max_duration_ms is not None:
        ts.max_duration_ms = settings.max_duration_ms
        told["max_duration_ms"] = settings.max_duration_ms
    # Fewer generated queries than this and a SUT at the expected speed runs out of them.
    floor_ns = 2 * settings.min_duration_ms * 1_000_000 / _MAX_GENERATED_QUERIES
    if settings.scenario in ("singlestream", "multistream"):
        if settings.expected_latency_ms is not None:
            expected_ns = settings.expected_latency_ms * 1_000_000
        else:
            assert calibration is not None
            per_query = _expected_query_ns(settings, calibration)
            # Under-promise: LoadGen generates 2x the queries the expected latency predicts and
            # stops at min_duration, so a faster-than-measured SUT must not run out of them.
            expected_ns = per_query / 2
        expected = max(int(expected_ns), int(floor_ns), 1)
        _fit_budget(ts, told, settings, 2 * expected / 1e9)
        if settings.scenario == "singlestream":
            ts.single_stream_expected_latency_ns = expected
            told["single_stream_expected_latency_ns"] = expected
        else:
            ts.multi_stream_samples_per_query = settings.multistream_samples_per_query
            ts.multi_stream_expected_latency_ns = expected
            told["multi_stream_samples_per_query"] = settings.multistream_samples_per_query
            told["multi_stream_expected_latency_ns"] = expected
    elif settings.scenario == "server":
        if settings.target_qps is not None:
            qps = settings.target_qps
        else:
            assert calibration is not None
            qps = calibration.throughput / 2
        ts.server_target_qps = qps
        _fit_budget(ts, told, settings, 1.0 / qps)
        ts.server_target_latency_ns = int(settings.server_target_latency_ms * 1_000_000)
        # One sample per IssueQuery: the dynamic batcher, not LoadGen, decides what runs together.
        ts.server_coalesce_queries = False
        told["server_target_qps"] = qps
        told["server_target_latency_ns"] = ts.server_target_latency_ns
        if settings.server_max_outstanding is not None:
            ts.server_max_async_queries = settings.server_max_outstanding
            told["server_max_async_queries"] = settings.server_max_outstanding
    else:
        if settings.target_qps is not None:
            qps = settings.target_qps
        else:
            assert calibration is not None
            # LoadGen issues 1.1x min_duration at this rate, and a SUT that beats it finishes
            # early, which is INVALID: promise a little more than a short measurement saw.
            qps = calibration.throughput * 1.2
        ts.offline_expected_qps = qps
        told["offline_expected_qps"] = qps
    return ts, told


def _fit_budget(ts: Any, told: dict[str, Any], settings: LoadGenSettings, query_s: float) -> None:
    """Quick runs: no more queries than fit in the budget (32 at least), early stopping or not."""
    if not settings.quick or settings.query_budget_s is None or settings.min_query_count is None:
        return
    fits = max(32, int(settings.query_budget_s / max(query_s, 1e-9)))
    if fits < settings.min_query_count:
        ts.min_query_count = fits
        told["min_query_count"] = fits
        told["min_query_count_note"] = (
            f"lowered from {settings.min_query_count} to fit the quick budget of "
            f"{settings.query_budget_s:g} s: LoadGen's early stopping may call the run INVALID"
        )


def _expected_query_ns(settings: LoadGenSettings, calibration: Calibration) -> float:
    if settings.scenario == "singlestream":
        return calibration.latency_ns
    per_query = settings.multistream_samples_per_query
    full, rest = divmod(per_query, settings.batch_size)
    return full * calibration.batch_latency_ns + (calibration.latency_ns if rest else 0.0)
