"""The Server QPS search: the highest target QPS LoadGen calls VALID within the p99 bound."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from crossinfer.backends.base import Session
from crossinfer.bench.loadgen import ScenarioOutcome, run_scenario
from crossinfer.bench.pool import SamplePool, StagedPool, as_staged
from crossinfer.bench.settings import LoadGenSettings
from crossinfer.bench.sut import calibrate
from crossinfer.errors import InferenceError, UsageError

__all__ = ["ServerSearch", "ServerStep", "find_server_qps"]


@dataclass(frozen=True)
class ServerStep:
    """One Server run of the search."""

    target_qps: float
    valid: bool
    p99_ms: float | None  # LoadGen's 99.00 percentile latency
    completed_qps: float | None  # LoadGen's "Completed samples per second"
    log_dir: Path


@dataclass(frozen=True)
class ServerSearch:
    """The highest Server target QPS that LoadGen called VALID (p99 bound included)."""

    steps: tuple[ServerStep, ...]
    best_qps: float | None  # None when no step was VALID
    best: ScenarioOutcome | None
    estimate_qps: float  # from the direct throughput measurement the search started from
    target_latency_ms: float
    last: ScenarioOutcome | None = None  # the newest step's run, VALID or not
    note: str = ""


def find_server_qps(
    session: Session,
    pool: SamplePool | StagedPool,
    settings: LoadGenSettings,
    *,
    log_root: Path,
    low: float | None = None,
    high: float | None = None,
    max_steps: int = 6,
    precision: float = 0.05,
    time_budget_s: float | None = None,
) -> ServerSearch:
    """Binary-search the Server target QPS for the highest VALID run, in at most `max_steps` runs.

    Starts at 80% of the directly measured throughput (capped to [low, high]; `high` defaults to
    twice that measurement); doubles while VALID and below `high`, divides by four while INVALID
    and no VALID step is known (a noisy machine can miss the bound at 80% and at 40% of its
    throughput alike, and a quick search has few steps), then bisects until the bracket is narrower than `precision`. No step
    starts after `time_budget_s`. Each step's LoadGen logs go to ``log_root/step-N``; an
    overloaded step ends early (LoadGen's server_max_async_queries) instead of draining.
    """
    started = time.monotonic()
    pool = as_staged(pool, session)  # staged once, for every step
    if settings.scenario != "server":
        settings = dataclasses.replace(settings, scenario="server")
    if max_steps < 1:
        raise UsageError(f"max_steps must be at least 1, got {max_steps}")
    try:
        calibration = calibrate(
            session, pool, batch_size=settings.batch_size, instances=settings.instances
        )
    except InferenceError as exc:
        raise InferenceError(f"Server QPS search failed: {exc}") from exc
    estimate = calibration.throughput
    ceiling = high if high is not None else estimate * 2
    floor = low if low is not None else 0.0
    qps = min(max(estimate * 0.8, floor if floor > 0 else 1e-3), ceiling)
    good: float | None = None
    bad: float | None = None
    steps: list[ServerStep] = []
    best: ScenarioOutcome | None = None
    last: ScenarioOutcome | None = None
    note = ""
    bound_ns = settings.server_target_latency_ms * 1e6
    if calibration.latency_ns > bound_ns:
        # one sample alone takes longer than the p99 bound: no target QPS can meet it, so one
        # run at a modest rate gives LoadGen's verdict and the search stops there
        note = (
            f"a single sample takes {calibration.latency_ns / 1e6:.1f} ms (median), more than "
            f"the p99 bound of {settings.server_target_latency_ms:g} ms: no QPS can meet it"
        )
        max_steps = 1
        qps = max(min(estimate * 0.5, ceiling), 1e-3)
    for i in range(max_steps):
        step_settings = dataclasses.replace(
            settings,
            target_qps=qps,
            server_max_outstanding=settings.server_max_outstanding
            or _max_outstanding(settings, qps),
        )
        outcome = run_scenario(
            session, pool, step_settings, log_dir=log_root / f"step-{i}", calibration=calibration
        )
        last = outcome
        p99 = outcome.summary_ns("99.00 percentile latency (ns)")
        steps.append(
            ServerStep(
                target_qps=qps,
                valid=outcome.valid,
                p99_ms=p99 / 1e6 if p99 is not None else None,
                completed_qps=outcome.summary_ns("Completed samples per second"),
                log_dir=outcome.log_dir,
            )
        )
        if outcome.valid:
            if good is None or qps > good:
                good, best = qps, outcome
        else:
            bad = qps if bad is None else min(bad, qps)
        nxt = _next_qps(good, bad, floor, ceiling)
        if nxt is None or (good is not None and bad is not None and (bad - good) / bad < precision):
            break
        if time_budget_s is not None and time.monotonic() - started > time_budget_s:
            break
        qps = nxt
    return ServerSearch(
        steps=tuple(steps),
        best_qps=good,
        best=best,
        estimate_qps=estimate,
        target_latency_ms=settings.server_target_latency_ms,
        last=last,
        note=note,
    )


def _next_qps(good: float | None, bad: float | None, floor: float, ceiling: float) -> float | None:
    if good is not None and bad is not None:
        return (good + bad) / 2
    if good is not None:
        return None if good >= ceiling else min(good * 2, ceiling)
    assert bad is not None
    if floor > 0 and bad <= floor:
        return None
    return max(bad / 4, floor) if floor > 0 else bad / 4


def _max_outstanding(settings: LoadGenSettings, qps: float) -> int:
    # A backlog this deep means most queued queries wait past several latency bounds (Little's
    # law) and are more than 1% of the run: the step is INVALID, so end it instead of draining.
    bound_s = settings.server_target_latency_ms / 1000
    total = max(settings.effective_min_query_count, qps * settings.min_duration_ms / 1000)
    in_flight = settings.batch_size * settings.instances
    return int(max(64, 4 * qps * bound_s, 0.02 * total) + in_flight)
