"""`crossinfer bench`: every scenario x batch size on one backend x device, each setting in a child
process (a crashing runtime becomes an error row, and peak memory is the child's own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossinfer import __version__
from crossinfer.backends.base import (
    BackendEntry,
    InputPlacement,
    Session,
    SessionOptions,
    StagingSession,
    Target,
    backend_entry,
    load_backend,
)
from crossinfer.bench.energy import EnergyMeter
from crossinfer.bench.fingerprint import hardware_fingerprint, runtime_versions
from crossinfer.bench.loadgen import ScenarioOutcome, run_scenario
from crossinfer.bench.memory import PeakMemory
from crossinfer.bench.pool import (
    SamplePool,
    StagedPool,
    check_batchable,
    default_placement,
    run_shapes,
)
from crossinfer.bench.result import SCENARIOS, BenchResult, EnergyReading, LatencyStats
from crossinfer.bench.server_search import find_server_qps
from crossinfer.bench.settings import LoadGenSettings, quick_settings
from crossinfer.bench.stats import latency_stats, stability
from crossinfer.check.isolate import ChildOutcome, last_words, run_isolated
from crossinfer.errors import CrossinferError, InferenceError, UsageError
from crossinfer.model import ModelArtifact

NOT_COMPLIANT = "quick run: not a compliant MLPerf run"
# MLPerf's Server p99 bounds for the models it defines (../shared/REFERENCE.md); 10 ms otherwise
SERVER_LATENCY_MS = {"resnet": 15.0, "mobilenet": 15.0, "bert": 130.0}
MULTISTREAM_SAMPLES = 8


@dataclass(frozen=True)
class BenchPlan:
    """What to measure: scenarios, batch sizes and the knobs of each run."""

    scenarios: tuple[str, ...] = SCENARIOS
    batch_sizes: tuple[int, ...] = (1,)
    quick: bool = False
    instances: int = 1
    server_latency_ms: float | None = None  # None: MLPerf's bound for the model family, else 10
    max_server_steps: int | None = None  # None: 4 for quick runs, 8 otherwise
    pool_size: int = 64
    min_duration_ms: int | None = None  # None: 1 s for quick runs, MLPerf's 600 s otherwise
    # the sample pool resident on the device (where the backend takes it): measures the device,
    # not the system, and every result says so; else pinned host memory where taken, else numpy
    inputs_on_device: bool = False

    def __post_init__(self) -> None:
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise UsageError(
                f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(SCENARIOS)} or all"
            )
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")


@dataclass(frozen=True, kw_only=True)
class BenchFailure:
    """A setting that could not be measured, with the reason (crash, timeout, runtime error).

    A record in `BenchRun.errors`, not an exception: a failed setting is a result of the run.
    """

    target: str
    batch_size: int
    scenarios: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class BenchRun:
    results: tuple[BenchResult, ...]
    errors: tuple[BenchFailure, ...] = field(default=())


def server_latency_for(artifact: ModelArtifact) -> float:
    name = artifact.source.lower()
    for family, bound in SERVER_LATENCY_MS.items():
        if family in name:
            return bound
    return 10.0


def run_benchmark(
    artifact: ModelArtifact,
    target: Target,
    *,
    plan: BenchPlan,
    options: SessionOptions | None = None,
    log_root: Path,
    timeout_s: float = 1800.0,
    on_result: Callable[[BenchResult], None] | None = None,
    on_error: Callable[[BenchFailure], None] | None = None,
) -> BenchRun:
    """Measure every scenario of `plan` at every batch size; one child process per batch size.

    SingleStream (one sample per query) and MultiStream (8 per query) do not depend on the batch
    size asked for: they run once, with the first batch size's child.
    """
    options = options or SessionOptions()
    entry = backend_entry(target.backend)
    latency_bound = plan.server_latency_ms or server_latency_for(artifact)
    results: list[BenchResult] = []
    errors: list[BenchFailure] = []
    for i, batch in enumerate(plan.batch_sizes):
        scenarios = tuple(s for s in plan.scenarios if s in ("offline", "server") or i == 0)
        if not scenarios:
            continue
        outcome = run_isolated(
            bench_in_child,
            entry,
            dataclasses.replace(artifact, proto=None),
            target.device,
            options,
            plan,
            batch,
            scenarios,
            latency_bound,
            log_root / f"{target.backend}-{target.device}" / f"batch-{batch}",
            timeout_s=timeout_s,
        )
        if outcome.ok:
            child: ChildBench = outcome.value
            for result in child.results:
                results.append(result)
                if on_result:
                    on_result(result)
            for error in child.errors:
                errors.append(error)
                if on_error:
                    on_error(error)
            continue
        error = BenchFailure(
            target=str(target), batch_size=batch, scenarios=scenarios, reason=_reason(outcome)
        )
        errors.append(error)
        if on_error:
            on_error(error)
    return BenchRun(tuple(results), tuple(errors))


def _reason(outcome: ChildOutcome) -> str:
    """Why a child process gave no result, for a BenchFailure."""
    if outcome.status != "error":
        # a crashed runtime's last words (an assertion, a CUDA error) say why; keep a few lines
        last = last_words(outcome.stderr_tail)
        said = f" (last stderr: {last[-600:]})" if last else ""
        return f"{outcome.status}: {outcome.message}{said}"
    # our own errors already say what went wrong; a foreign one needs its type named
    if outcome.error_class is not None:
        return outcome.message
    return f"{outcome.error_type}: {outcome.message}"


@dataclass(frozen=True)
class ChildBench:
    results: tuple[BenchResult, ...]
    errors: tuple[BenchFailure, ...]


def bench_in_child(
    entry: BackendEntry,
    artifact: ModelArtifact,
    device: str,
    options: SessionOptions,
    plan: BenchPlan,
    batch: int,
    scenarios: Sequence[str],
    server_latency_ms: float,
    log_dir: Path,
) -> ChildBench:
    """Runs in the child process: prepare once, then each scenario through LoadGen."""
    hardware = hardware_fingerprint()
    versions = runtime_versions()
    with PeakMemory(gpu=device not in ("cpu",)) as memory:
        backend = load_backend(entry)
        start = time.perf_counter()
        session = backend.prepare(artifact, device, options)
        load_s = time.perf_counter() - start
        child = bench_session(
            session,
            artifact,
            Target(entry.name, device),
            options=options,
            plan=plan,
            batch=batch,
            scenarios=scenarios,
            server_latency_ms=server_latency_ms,
            log_dir=log_dir,
            load_s=load_s,
            hardware=hardware,
            versions=versions,
        )
        session.close()
    # the peak belongs to the whole child: every row of it shares the figure
    final = tuple(
        dataclasses.replace(
            r, peak_rss_mb=memory.peak_rss_mb, peak_device_mem_mb=memory.peak_device_mem_mb
        )
        for r in child.results
    )
    return ChildBench(final, child.errors)


def bench_session(
    session: Session,
    artifact: ModelArtifact,
    target: Target,
    *,
    options: SessionOptions,
    plan: BenchPlan,
    batch: int,
    scenarios: Sequence[str],
    server_latency_ms: float,
    log_dir: Path,
    load_s: float = 0.0,
    hardware: dict[str, Any] | None = None,
    versions: dict[str, str] | None = None,
) -> ChildBench:
    """Each scenario of a prepared session through LoadGen, over one pool staged once.

    The pool goes where the session takes it (`default_placement`, or the device with
    `plan.inputs_on_device`); each result records the placement, the dtypes staged in, the
    warm-up time per batch shape and, for device-resident inputs, that it measures the device.
    Peak memory is left at 0 for the caller to fill in.
    """
    results: list[BenchResult] = []
    errors: list[BenchFailure] = []
    pool = SamplePool.random(artifact.inputs, count=plan.pool_size, seed=0)
    # the first inference, timed: at a shape the run uses, so that a session that compiles per
    # shape compiles nothing the run will not use (a batch of 1 before an Offline run at 256)
    first_rows = 1
    staging = session.input_staging() if isinstance(session, StagingSession) else None
    if staging is not None and staging.fixed_shapes and scenarios:
        with contextlib.suppress(CrossinferError):  # a bad setting fails its scenario below
            first = _settings(plan, scenarios[0], batch, server_latency_ms, artifact)
            first_rows = min(run_shapes(first, fixed_shapes=True))
    start = time.perf_counter()
    session.run(pool.batch([i % len(pool.samples) for i in range(first_rows)]))
    first_ms = (time.perf_counter() - start) * 1e3
    asked = InputPlacement.DEVICE if plan.inputs_on_device else default_placement(session)
    staged = StagedPool(pool, session, placement=asked)
    try:
        for scenario in scenarios:
            settings = _settings(plan, scenario, batch, server_latency_ms, artifact)
            try:
                check_batchable(session.inputs, settings.batch_size, model=artifact.source)
                gpu = None if target.device != "cpu" else ()
                with EnergyMeter(gpu_indices=gpu) as meter:
                    outcome, server_qps = _measure(
                        session, staged, settings, plan, log_dir / scenario
                    )
            except CrossinferError as exc:
                errors.append(
                    BenchFailure(
                        target=str(target),
                        batch_size=settings.batch_size,
                        scenarios=(scenario,),
                        reason=str(exc),
                    )
                )
                continue
            energy = meter.reading(outcome.samples_completed)
            result = _result(
                artifact,
                target.backend,
                target.device,
                options,
                settings,
                outcome,
                server_qps,
                load_s,
                first_ms,
                energy,
                hardware or {},
                versions or {},
                session.describe(),
            )
            results.append(_with_staging(result, staged, outcome))
    finally:
        staged.close()
    return ChildBench(tuple(results), tuple(errors))


def _with_staging(result: BenchResult, staged: StagedPool, outcome: ScenarioOutcome) -> BenchResult:
    placement = staged.placement.value
    settings = dict(result.settings)
    if placement != InputPlacement.NUMPY.value:
        settings["inputs"] = placement  # a change of placement is a change --compare names
    return dataclasses.replace(
        result,
        settings=settings,
        input_placement=placement,
        input_staging=staged.describe(),
        warmup_s={str(size): round(s, 4) for size, s in outcome.warmup_s.items()},
        # after the compliance note, which stays first; before the run's own notes
        notes=_insert_after_compliance(result.notes, staged.notes()),
    )


def _insert_after_compliance(notes: Sequence[str], more: Sequence[str]) -> tuple[str, ...]:
    first = 1 if notes and "not a compliant MLPerf run" in notes[0] else 0
    return (*notes[:first], *more, *notes[first:])


def _settings(
    plan: BenchPlan, scenario: str, batch: int, latency_ms: float, artifact: ModelArtifact
) -> LoadGenSettings:
    if scenario == "singlestream":
        batch = 1
    elif scenario == "multistream":
        batch = MULTISTREAM_SAMPLES if _batchable(artifact) else 1
    if plan.quick:
        settings = quick_settings(
            scenario,
            batch_size=batch,
            instances=plan.instances,
            min_duration_ms=plan.min_duration_ms or 1000,
        )
    else:
        settings = LoadGenSettings(
            scenario=scenario,
            min_duration_ms=plan.min_duration_ms or 600_000,
            batch_size=batch,
            instances=plan.instances,
        )
    return dataclasses.replace(settings, server_target_latency_ms=latency_ms)


def _batchable(artifact: ModelArtifact) -> bool:
    return all(s.shape and not isinstance(s.shape[0], int) for s in artifact.inputs)


def _measure(
    session: Any, pool: StagedPool, settings: LoadGenSettings, plan: BenchPlan, log_dir: Path
) -> tuple[ScenarioOutcome, float | None]:
    if settings.scenario != "server":
        return run_scenario(session, pool, settings, log_dir=log_dir), None
    steps = plan.max_server_steps or (4 if plan.quick else 8)
    search = find_server_qps(session, pool, settings, log_root=log_dir, max_steps=steps)
    if search.best is not None:
        return search.best, search.best_qps
    # no target QPS met the bound: report the last run, INVALID as LoadGen said, and why
    assert search.last is not None
    why = search.note or f"no target QPS of {len(search.steps)} tried met the p99 bound"
    return dataclasses.replace(search.last, notes=(*search.last.notes, why)), None


def _result(
    artifact: ModelArtifact,
    backend: str,
    device: str,
    options: SessionOptions,
    settings: LoadGenSettings,
    outcome: ScenarioOutcome,
    server_qps: float | None,
    load_s: float,
    first_ms: float,
    energy: EnergyReading,
    hardware: dict[str, Any],
    versions: dict[str, str],
    described: dict[str, Any],
) -> BenchResult:
    if not outcome.latencies_ns:
        raise InferenceError(f"{settings.scenario}: LoadGen completed no queries")
    latency: LatencyStats = latency_stats(outcome.latencies_ns)
    notes = list(outcome.notes)
    if settings.quick:
        notes.insert(0, NOT_COMPLIANT)
    elif settings.min_duration_ms < 600_000:
        notes.insert(
            0, f"{settings.min_duration_ms / 1000:g} s run: not a compliant MLPerf run (600 s)"
        )
    notes.extend(outcome.loadgen_errors[:3])
    return BenchResult(
        model_source=artifact.source,
        model_sha256=artifact.sha256,
        backend=backend,
        device=device,
        precision=options.precision.value,
        scenario=settings.scenario,
        batch_size=settings.batch_size,
        settings={
            "threads": options.threads,
            "streams": options.streams,
            "performance_hint": options.performance_hint,
            "options": dict(options.extra),  # backend knobs (--option KEY=VALUE)
            "instances": settings.instances,
            "max_queue_delay_ms": settings.max_queue_delay_ms
            if settings.scenario == "server"
            else None,
            "runtime": described,
        },
        latency=latency,
        throughput=outcome.throughput,
        server_qps=server_qps,
        target_latency_ms=settings.server_target_latency_ms
        if settings.scenario == "server"
        else None,
        first_inference_ms=first_ms,
        load_s=load_s,
        peak_rss_mb=0.0,  # the child's peak, filled in when all its scenarios ran
        peak_device_mem_mb=None,
        energy=energy,
        loadgen_result=outcome.result or "INVALID",
        loadgen_log_dir=str(outcome.log_dir),
        # MLPerf's rules: 600 s at least, and LoadGen's VALID
        compliant=not settings.quick and settings.min_duration_ms >= 600_000 and outcome.valid,
        stability=stability(outcome.window_throughputs),
        hardware=hardware,
        runtime_versions=versions,
        crossinfer_version=__version__,
        load_average=_load_average(),
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        notes=tuple(notes),
    )


def settings_changes(new: BenchResult, old: BenchResult) -> list[str]:
    """Settings that differ between two runs, as "threads 2 -> 1" (runtime details left out)."""
    changes = []
    for name in sorted(set(new.settings) | set(old.settings)):
        if name == "runtime":
            continue
        before, after = old.settings.get(name), new.settings.get(name)
        if before != after and (before or after):  # a key older rows lack is no change
            changes.append(f"{name} {before} -> {after}")
    for name in sorted(set(new.runtime_versions) | set(old.runtime_versions)):
        before, after = old.runtime_versions.get(name), new.runtime_versions.get(name)
        if before != after:
            changes.append(f"{name} {before} -> {after}")
    return changes


def _load_average() -> float | None:
    """The 1-minute load average at the end of the run (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
