"""Drive any backend Session through the real MLPerf LoadGen: SingleStream, MultiStream, Server, Offline.

An in-memory sample pool is the QSL, a batching system-under-test runs the Session, and every run
keeps LoadGen's own logs next to the latencies our SUT measured. This module only wires one run
together; the pieces live beside it: settings.py (what LoadGen is asked and told), pool.py (the
QSL), sut.py (the SUT and its calibration), summary.py (LoadGen's logs read back) and
server_search.py (the Server QPS search, a sequence of these runs).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from crossinfer.backends.base import Session
from crossinfer.bench.pool import SamplePool, StagedPool, as_staged, check_batchable, run_shapes
from crossinfer.bench.settings import Calibration, LoadGenSettings, to_test_settings
from crossinfer.bench.summary import detail_errors, metric_key, number, parse_summary
from crossinfer.bench.sut import WORKER_JOIN_S, Sut, calibrate
from crossinfer.errors import (
    BackendUnavailableError,
    CrossinferError,
    InferenceError,
    InputError,
    UsageError,
    short_message,
)

__all__ = ["ScenarioOutcome", "run_scenario"]

_NS = 1_000_000_000


def _loadgen() -> ModuleType:
    try:
        import mlperf_loadgen
    except ImportError as exc:
        raise BackendUnavailableError(
            f"MLPerf LoadGen is not importable ({exc}): pip install mlcommons-loadgen"
        ) from exc
    module: ModuleType = mlperf_loadgen
    return module


@dataclass(frozen=True)
class ScenarioOutcome:
    """One LoadGen run: its verdict and summary, and what our SUT measured."""

    scenario: str
    settings: LoadGenSettings
    valid: bool
    result: str  # "VALID" or "INVALID" from mlperf_log_summary.txt ("" if LoadGen wrote none)
    summary: Mapping[str, str]  # "key : value" lines of the summary, plus its bullet sections
    metric_name: str  # the figure LoadGen reports for this scenario
    metric_value: float | None
    latencies_ns: tuple[int, ...]  # per query (issue -> complete); Offline: per batch run
    latency_unit: str  # "query" or "batch" (Offline's one query would be a single number)
    queries: int  # queries LoadGen issued (Offline: 1)
    samples_completed: int
    batch_sizes: tuple[int, ...]  # samples per session.run, in order
    duration_s: float  # first issue -> last completion
    wall_s: float  # the whole StartTest call, LoadGen's setup included
    throughput: float  # samples / duration_s
    window_throughputs: tuple[float, ...]  # samples/s in equal windows of the run
    log_dir: Path
    loadgen_settings: Mapping[str, Any]  # what LoadGen was told (expected latency/QPS, counts)
    loadgen_errors: tuple[str, ...] = ()  # error lines of mlperf_log_detail.txt
    notes: tuple[str, ...] = field(default=())
    # batch size -> its first run before LoadGen started (compile/capture included), seconds
    warmup_s: Mapping[int, float] = field(default_factory=dict)

    @property
    def summary_path(self) -> Path:
        return self.log_dir / "mlperf_log_summary.txt"

    @property
    def detail_path(self) -> Path:
        return self.log_dir / "mlperf_log_detail.txt"

    def summary_ns(self, key: str) -> float | None:
        """A numeric summary value, e.g. ``summary_ns("99.00 percentile latency (ns)")``."""
        return number(self.summary.get(key))


def run_scenario(
    session: Session,
    pool: SamplePool | StagedPool,
    settings: LoadGenSettings,
    *,
    log_dir: Path,
    calibration: Calibration | None = None,
) -> ScenarioOutcome:
    """Run one scenario through LoadGen in PerformanceOnly mode and collect both views of it.

    Expected latency (SingleStream/MultiStream), expected QPS (Offline) and, when not given,
    the Server target QPS (half the measured throughput) come from `calibration`, measured here
    when missing. A failing session raises InferenceError naming the scenario.

    A plain `SamplePool` is staged as numpy; a `StagedPool` (pinned or device inputs) is used as
    staged. Staging happens once, before calibration: LoadGen's LoadSamplesToRam finds it done.
    Every batch shape the run uses (`run_shapes`) is run before LoadGen starts, and the first
    run's time (compile or capture) is kept apart in `ScenarioOutcome.warmup_s`.
    """
    lg = _loadgen()
    pool = as_staged(pool, session)
    name = settings.loadgen_scenario
    model = getattr(getattr(session, "target", None), "backend", "the session")
    check_batchable(session.inputs, settings.batch_size, model=f"{model} session")
    expected_names = {spec.name for spec in session.inputs}
    if set(pool.names) != expected_names:
        raise InputError(
            f"the sample pool has inputs {sorted(pool.names)}, the session takes "
            f"{sorted(expected_names)}"
        )
    if settings.scenario == "multistream" and len(pool) < settings.multistream_samples_per_query:
        raise UsageError(
            f"MultiStream needs a pool of at least {settings.multistream_samples_per_query} "
            f"samples, got {len(pool)}"
        )
    try:
        pool.load()
    except CrossinferError:
        raise
    except Exception as exc:
        raise InferenceError(
            f"{name} run failed: staging the sample pool ({pool.placement.value} inputs) failed: "
            f"{type(exc).__name__}: {short_message(exc)}"
        ) from exc
    try:
        warmup = pool.warm_up(
            run_shapes(settings, fixed_shapes=pool.fixed_shapes), workers=settings.instances
        )
    except CrossinferError as exc:
        raise InferenceError(f"{name} run failed while warming up: {exc}") from exc
    except Exception as exc:
        raise InferenceError(
            f"{name} run failed: session.run failed while warming up: "
            f"{type(exc).__name__}: {short_message(exc)}"
        ) from exc
    if calibration is None and _needs_calibration(settings):
        try:
            calibration = calibrate(
                session, pool, batch_size=settings.batch_size, instances=settings.instances
            )
        except InferenceError as exc:
            raise InferenceError(f"{name} run failed: {exc}") from exc

    test_settings, told = to_test_settings(lg, settings, calibration)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(log_dir)
    log_settings.log_output.prefix = "mlperf_log_"
    log_settings.log_output.suffix = ""
    log_settings.log_output.prefix_with_datetime = False
    log_settings.log_output.copy_detail_to_stdout = False
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False

    sut = Sut(lg, session, pool, settings)
    sut_handle = lg.ConstructSUT(sut.issue, sut.flush)
    # The whole pool is the performance set, staged once already (load returns at once).
    qsl_handle = lg.ConstructQSL(len(pool), len(pool), pool.load, _no_op)
    started = time.perf_counter()
    try:
        sut.start()
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, test_settings, log_settings)
    finally:
        stopped = sut.stop()
        lg.DestroyQSL(qsl_handle)
        lg.DestroySUT(sut_handle)
    wall_s = time.perf_counter() - started

    if sut.error is not None:
        failure = sut.error
        if isinstance(failure, KeyboardInterrupt):
            raise failure  # Ctrl-C lands in a callback (the only Python running): pass it on
        raise InferenceError(
            f"{name} run failed after {sut.error_after_samples} samples: session.run raised "
            f"{type(failure).__name__}: {short_message(failure)} (LoadGen logs in {log_dir})"
        ) from failure
    if not stopped:
        raise InferenceError(f"{name} run: a worker thread did not stop within {WORKER_JOIN_S} s")
    return dataclasses.replace(_outcome(sut, settings, log_dir, wall_s, told), warmup_s=warmup)


def _no_op(_indices: list[int]) -> None:
    return None


def _needs_calibration(settings: LoadGenSettings) -> bool:
    if settings.scenario in ("singlestream", "multistream"):
        return settings.expected_latency_ms is None
    return settings.target_qps is None


def _outcome(
    sut: Sut, settings: LoadGenSettings, log_dir: Path, wall_s: float, told: dict[str, Any]
) -> ScenarioOutcome:
    summary_path = log_dir / "mlperf_log_summary.txt"
    summary = parse_summary(summary_path.read_text()) if summary_path.exists() else {}
    result = summary.get("Result is", "")
    metric_name = metric_key(settings.scenario, summary)
    completions = sorted(sut.completions)
    start = sut.first_issue_ns
    end = completions[-1][0] if completions else None
    duration_s = (end - start) / _NS if start is not None and end is not None else 0.0
    offline = settings.scenario == "offline"
    notes: list[str] = []
    if offline:
        notes.append("latencies are per batch run (Offline issues one query)")
        if sut.issue_ns > 10_000_000:  # the workers competed with it for the GIL meanwhile
            notes.append(f"LoadGen's query took {sut.issue_ns / 1e6:.0f} ms to hand over")
    if settings.scenario in ("singlestream", "multistream") and settings.instances > 1:
        notes.append("instances ignored: SingleStream/MultiStream queries run one at a time")
    if "min_query_count_note" in told:
        notes.append(f"min_query_count {told['min_query_count']}: {told['min_query_count_note']}")
    return ScenarioOutcome(
        scenario=settings.scenario,
        settings=settings,
        valid=result == "VALID",
        result=result,
        summary=summary,
        metric_name=metric_name,
        metric_value=number(summary.get(metric_name)),
        latencies_ns=tuple(sut.batch_latencies_ns if offline else sut.query_latencies_ns),
        latency_unit="batch" if offline else "query",
        queries=1 if offline else sut.queries,
        samples_completed=sut.samples_completed,
        batch_sizes=tuple(sut.batch_sizes),
        duration_s=duration_s,
        wall_s=wall_s,
        throughput=sut.samples_completed / duration_s if duration_s > 0 else 0.0,
        window_throughputs=_windows(completions, start, end, settings.stability_windows),
        log_dir=log_dir,
        loadgen_settings=told,
        loadgen_errors=detail_errors(log_dir / "mlperf_log_detail.txt"),
        notes=tuple(notes),
    )


_MIN_COMPLETIONS_PER_WINDOW = 4


def _windows(
    completions: Sequence[tuple[int, int]], start: int | None, end: int | None, n: int
) -> tuple[float, ...]:
    """Throughput of up to `n` consecutive windows holding equal numbers of completions.

    Equal counts, not equal times: a window of fixed length that catches 1 or 2 of a slow
    model's batches swings by 100% for no reason but where the batch ends fell.
    """
    if start is None or end is None or end <= start:
        return ()
    windows = min(n, len(completions) // _MIN_COMPLETIONS_PER_WINDOW)
    if windows < 1:
        return ()
    bounds = [round(i * len(completions) / windows) for i in range(windows + 1)]
    out = []
    previous = start
    for lo, hi in itertools.pairwise(bounds):
        group = completions[lo:hi]
        stop = group[-1][0]
        samples = sum(count for _, count in group)
        out.append(samples / ((stop - previous) / _NS) if stop > previous else 0.0)
        previous = stop
    return tuple(out)
