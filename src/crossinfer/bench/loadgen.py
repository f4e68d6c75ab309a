"""Drive any backend Session through the real MLPerf LoadGen: SingleStream, MultiStream, Server, Offline.

An in-memory sample pool is the QSL, a batching system-under-test runs the Session, and every run
keeps LoadGen's own logs next to the latencies our SUT measured.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import queue
import re
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from crossinfer.backends.base import Session
from crossinfer.bench.result import SCENARIOS
from crossinfer.check.inputs import random_inputs
from crossinfer.errors import (
    BackendUnavailableError,
    CrossinferError,
    InferenceError,
    InputError,
    UsageError,
    short_message,
)
from crossinfer.model import TensorSpec

__all__ = [
    "EARLY_STOPPING_MIN_QUERIES",
    "Calibration",
    "LoadGenSettings",
    "SamplePool",
    "ScenarioOutcome",
    "ServerSearch",
    "ServerStep",
    "calibrate",
    "check_batchable",
    "find_server_qps",
    "parse_summary",
    "quick_settings",
    "run_scenario",
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
_NS = 1_000_000_000
_WORKER_JOIN_S = 30.0


def _loadgen() -> ModuleType:
    try:
        import mlperf_loadgen
    except ImportError as exc:
        raise BackendUnavailableError(
            f"MLPerf LoadGen is not importable ({exc}): pip install mlcommons-loadgen"
        ) from exc
    module: ModuleType = mlperf_loadgen
    return module


# --- settings -------------------------------------------------------------------------------


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


# --- sample pool ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SamplePool:
    """Single-sample feeds (leading batch dim 1) held in memory: LoadGen's QSL indexes them."""

    samples: tuple[Mapping[str, np.ndarray], ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise InputError("a sample pool needs at least one sample")
        names = set(self.samples[0])
        for i, sample in enumerate(self.samples):
            if set(sample) != names:
                raise InputError(
                    f"sample {i} has inputs {sorted(sample)}, sample 0 has {sorted(names)}"
                )

    @classmethod
    def random(
        cls,
        inputs: Sequence[TensorSpec],
        *,
        count: int = 64,
        dims: Mapping[str, int] | None = None,
        seed: int = 0,
    ) -> SamplePool:
        """`count` seeded random samples (seed, seed+1, ...) of batch 1."""
        return cls(
            tuple(random_inputs(inputs, batch=1, dims=dims, seed=seed + i) for i in range(count))
        )

    @classmethod
    def from_feeds(cls, feeds: Mapping[str, np.ndarray]) -> SamplePool:
        """Split batched feeds along axis 0 into single-sample feeds (each keeps its batch dim)."""
        sizes = {name: np.asarray(a).shape[0] if np.ndim(a) else 0 for name, a in feeds.items()}
        if len(set(sizes.values())) != 1 or 0 in sizes.values():
            raise InputError(f"feeds must share a leading batch dimension, got {sizes}")
        n = next(iter(sizes.values()))
        return cls(
            tuple(
                {name: np.ascontiguousarray(np.asarray(a)[i : i + 1]) for name, a in feeds.items()}
                for i in range(n)
            )
        )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.samples[0])

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The samples at `indices` concatenated along axis 0 (no padding)."""
        if len(indices) == 1:
            return dict(self.samples[indices[0]])
        return {
            name: np.concatenate([self.samples[i][name] for i in indices], axis=0)
            for name in self.names
        }


def check_batchable(inputs: Sequence[TensorSpec], batch_size: int, *, model: str = "model") -> None:
    """Refuse batch_size > 1 for a model whose inputs have a fixed (or no) batch dimension."""
    if batch_size == 1:
        return
    for spec in inputs:
        if spec.shape is None or len(spec.shape) == 0:
            raise UsageError(
                f"batch_size {batch_size} cannot be used with {model}: input '{spec.name}' has "
                "no batch dimension to concatenate along; use batch_size 1"
            )
        lead = spec.shape[0]
        if isinstance(lead, int):
            raise UsageError(
                f"batch_size {batch_size} cannot be used with {model}: input '{spec.name}' has a "
                f"fixed batch dimension of {lead} (shape {spec.shape_str()}); use batch_size 1, "
                "or re-export the model with a symbolic batch dimension"
            )


# --- calibration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """A short direct measurement that tells LoadGen what to expect (it pre-generates queries)."""

    latency_ns: float  # median single-sample run
    batch_latency_ns: float  # median run at batch_size
    batch_size: int
    throughput: float  # samples/s at batch_size with `instances` threads
    instances: int


def calibrate(
    session: Session,
    pool: SamplePool,
    *,
    batch_size: int = 1,
    instances: int = 1,
    budget_s: float = 0.3,
) -> Calibration:
    """Time the session directly for about `budget_s` (after one warm-up run of each shape).

    The throughput loop builds each batch from the pool as the SUT does, so that the cost of
    concatenating inputs is in the figure LoadGen is told to expect.
    """
    indices = [i % len(pool) for i in range(batch_size)]
    try:
        session.run(pool.batch([0]))
        if batch_size > 1:
            session.run(pool.batch(indices))
        latency = _median_run_ns(session, pool, [0], budget_s / 3)
        batch_latency = (
            latency if batch_size == 1 else _median_run_ns(session, pool, indices, budget_s / 3)
        )
        throughput = _threaded_throughput(session, pool, indices, instances, budget_s / 3)
    except CrossinferError:
        raise
    except Exception as exc:
        raise InferenceError(
            f"session.run failed while calibrating: {type(exc).__name__}: {short_message(exc)}"
        ) from exc
    return Calibration(latency, batch_latency, batch_size, throughput, instances)


def _median_run_ns(
    session: Session, pool: SamplePool, indices: list[int], budget_s: float
) -> float:
    feeds = pool.batch(indices)
    times: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        t0 = time.perf_counter_ns()
        session.run(feeds)
        times.append(time.perf_counter_ns() - t0)
    return float(statistics.median(times))


def _threaded_throughput(
    session: Session, pool: SamplePool, indices: list[int], instances: int, budget_s: float
) -> float:
    # The batches go through the SUT's own code path (inputs concatenated, responses built,
    # books kept) with LoadGen stubbed out: for a small model that overhead is most of the cost.
    settings = LoadGenSettings(scenario="offline", batch_size=len(indices), instances=instances)
    sut = _Sut(_DryLoadGen(), session, pool, settings)
    deadline = time.perf_counter() + budget_s

    def loop() -> None:
        runs = 0
        while sut.error is None and (runs < 2 or (time.perf_counter() < deadline and runs < 400)):
            query = _Query(0, len(indices))
            sut._process([(i, index, query) for i, index in enumerate(indices)])
            runs += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(instances)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if sut.error is not None:
        raise sut.error
    return sut.samples_completed / max(time.perf_counter() - t0, 1e-9)


class _DryLoadGen:
    """Stands in for mlperf_loadgen when calibrating the SUT's code path."""

    @staticmethod
    def QuerySampleResponse(sample_id: int, data: int, size: int) -> None:
        return None

    @staticmethod
    def QuerySamplesComplete(responses: list[Any]) -> None:
        return None


# --- the system under test ------------------------------------------------------------------


class _Query:
    __slots__ = ("issued_ns", "remaining")

    def __init__(self, issued_ns: int, remaining: int) -> None:
        self.issued_ns = issued_ns
        self.remaining = remaining


_Item = tuple[int, int, _Query]  # LoadGen response id, sample index, the query it belongs to


class _Sut:
    """Runs LoadGen's queries on a Session; never lets an exception reach LoadGen's thread.

    An exception escaping a callback would terminate the process from inside LoadGen, and an
    uncompleted sample would make LoadGen wait forever: so every failure completes its samples
    with empty responses, is recorded, and later samples are completed without running.
    """

    def __init__(
        self,
        lg: ModuleType | _DryLoadGen,
        session: Session,
        pool: SamplePool,
        settings: LoadGenSettings,
    ) -> None:
        self._lg = lg
        self._session = session
        self._pool = pool
        self._settings = settings
        self._batch_size = settings.batch_size
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[_Item] | None] = queue.Queue()
        self._flushed = threading.Event()
        self._workers: list[threading.Thread] = []
        self.inline = settings.scenario in ("singlestream", "multistream")
        self.query_latencies_ns: list[int] = []
        self.batch_latencies_ns: list[int] = []
        self.batch_sizes: list[int] = []
        self.completions: list[tuple[int, int]] = []  # (time ns, samples completed)
        self.queries = 0
        self.samples_completed = 0
        self.first_issue_ns: int | None = None
        self.error: BaseException | None = None
        self.error_after_samples = 0

    def start(self) -> None:
        if self.inline:
            return
        for i in range(self._settings.instances):
            worker = threading.Thread(
                target=self._work, name=f"crossinfer-loadgen-worker-{i}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def stop(self) -> bool:
        """Stop the workers; False when one did not finish in time."""
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + _WORKER_JOIN_S
        for worker in self._workers:
            worker.join(max(deadline - time.monotonic(), 0.0))
        return not any(worker.is_alive() for worker in self._workers)

    # LoadGen calls these two on its own threads.

    def issue(self, query_samples: Sequence[Any]) -> None:
        items: list[_Item] = []
        try:
            now = time.perf_counter_ns()
            pairs = [(int(s.id), int(s.index)) for s in query_samples]
            scenario = self._settings.scenario
            with self._lock:
                if self.first_issue_ns is None:
                    self.first_issue_ns = now
                if scenario != "offline":
                    self.queries += len(pairs) if scenario == "server" else 1
            if scenario == "server":
                # Server queries are single samples; each one is its own query to time.
                for sample_id, index in pairs:
                    self._queue.put([(sample_id, index, _Query(now, 1))])
                return
            query = _Query(now, len(pairs))
            items = [(sample_id, index, query) for sample_id, index in pairs]
            chunks = [
                items[i : i + self._batch_size] for i in range(0, len(items), self._batch_size)
            ]
            if self.inline:
                for chunk in chunks:
                    self._process(chunk)
            else:
                for chunk in chunks:
                    self._queue.put(chunk)
        except BaseException as exc:  # see the class docstring: never raise into LoadGen
            self._record_error(exc)
            if items:
                return  # handed over already: whoever holds them completes them
            ids = [int(s.id) for s in query_samples]
            self._complete_ids(ids)

    def flush(self) -> None:
        # No more queries are coming: stop waiting for a batch to fill.
        self._flushed.set()

    # internals

    def _work(self) -> None:
        delay_s = self._settings.max_queue_delay_ms / 1000
        dynamic = self._settings.scenario == "server" and self._batch_size > 1
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = list(first)
            stop = False
            if dynamic:
                deadline = time.monotonic() + delay_s
                while len(items) < self._batch_size:
                    remaining = 0.0 if self._flushed.is_set() else deadline - time.monotonic()
                    try:
                        more = (
                            self._queue.get(timeout=remaining)
                            if remaining > 0
                            else self._queue.get_nowait()
                        )
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    items.extend(more)
            for i in range(0, len(items), self._batch_size):
                self._process(items[i : i + self._batch_size])
            if stop:
                return

    def _process(self, items: list[_Item]) -> None:
        """Run one batch and complete its samples; never raises."""
        started = time.perf_counter_ns()
        n = len(items)
        first: np.ndarray | None = None
        if self.error is None:
            try:
                outputs = self._session.run(self._pool.batch([index for _, index, _ in items]))
                first = _first_output_rows(outputs, n)
            except BaseException as exc:
                self._record_error(exc)
        response = self._lg.QuerySampleResponse
        if first is not None:
            # Each response points at its row of the first output: real bytes, no copies.
            base = first.__array_interface__["data"][0]
            row_bytes = first.nbytes // n
            responses = [
                response(sample_id, base + i * row_bytes, row_bytes)
                for i, (sample_id, _, _) in enumerate(items)
            ]
        else:
            responses = [response(sample_id, 0, 0) for sample_id, _, _ in items]
        done = time.perf_counter_ns()
        # Record before completing: once the last sample completes, LoadGen may return and the
        # caller reads these lists.
        with self._lock:
            self.batch_latencies_ns.append(done - started)
            self.batch_sizes.append(n)
            self.completions.append((done, n))
            self.samples_completed += n
            for _, _, query in items:
                query.remaining -= 1
                if query.remaining == 0:
                    self.query_latencies_ns.append(done - query.issued_ns)
        try:
            self._lg.QuerySamplesComplete(responses)
        except BaseException as exc:
            self._record_error(exc)
        del first  # the response buffers must stay alive until QuerySamplesComplete returned

    def _complete_ids(self, ids: list[int]) -> None:
        try:
            self._lg.QuerySamplesComplete([self._lg.QuerySampleResponse(i, 0, 0) for i in ids])
        except BaseException as exc:
            self._record_error(exc)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
                self.error_after_samples = self.samples_completed


def _first_output_rows(outputs: Mapping[str, np.ndarray], n: int) -> np.ndarray | None:
    # LoadGen only needs a response per sample; the first output's rows are real bytes to point
    # at. An output without a batch dimension of n cannot be split: answer with empty buffers.
    if not outputs:
        return None
    first = np.ascontiguousarray(next(iter(outputs.values())))
    if first.ndim == 0 or first.shape[0] != n:
        return None
    return first


# --- one run --------------------------------------------------------------------------------


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

    @property
    def summary_path(self) -> Path:
        return self.log_dir / "mlperf_log_summary.txt"

    @property
    def detail_path(self) -> Path:
        return self.log_dir / "mlperf_log_detail.txt"

    def summary_ns(self, key: str) -> float | None:
        """A numeric summary value, e.g. ``summary_ns("99.00 percentile latency (ns)")``."""
        return _number(self.summary.get(key))


def run_scenario(
    session: Session,
    pool: SamplePool,
    settings: LoadGenSettings,
    *,
    log_dir: Path,
    calibration: Calibration | None = None,
) -> ScenarioOutcome:
    """Run one scenario through LoadGen in PerformanceOnly mode and collect both views of it.

    Expected latency (SingleStream/MultiStream), expected QPS (Offline) and, when not given,
    the Server target QPS (half the measured throughput) come from `calibration`, measured here
    when missing. A failing session raises InferenceError naming the scenario.
    """
    lg = _loadgen()
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
    if calibration is None and _needs_calibration(settings):
        try:
            calibration = calibrate(
                session, pool, batch_size=settings.batch_size, instances=settings.instances
            )
        except InferenceError as exc:
            raise InferenceError(f"{name} run failed: {exc}") from exc

    test_settings, told = _test_settings(lg, settings, calibration)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(log_dir)
    log_settings.log_output.prefix = "mlperf_log_"
    log_settings.log_output.suffix = ""
    log_settings.log_output.prefix_with_datetime = False
    log_settings.log_output.copy_detail_to_stdout = False
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False

    sut = _Sut(lg, session, pool, settings)
    sut_handle = lg.ConstructSUT(sut.issue, sut.flush)
    # The whole pool is the performance set: load/unload are no-ops over memory we already hold.
    qsl_handle = lg.ConstructQSL(len(pool), len(pool), _no_op, _no_op)
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
        raise InferenceError(f"{name} run: a worker thread did not stop within {_WORKER_JOIN_S} s")
    return _outcome(sut, settings, log_dir, wall_s, told)


def _no_op(_indices: list[int]) -> None:
    return None


def _needs_calibration(settings: LoadGenSettings) -> bool:
    if settings.scenario in ("singlestream", "multistream"):
        return settings.expected_latency_ms is None
    return settings.target_qps is None


def _test_settings(
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


def _outcome(
    sut: _Sut, settings: LoadGenSettings, log_dir: Path, wall_s: float, told: dict[str, Any]
) -> ScenarioOutcome:
    summary_path = log_dir / "mlperf_log_summary.txt"
    summary = parse_summary(summary_path.read_text()) if summary_path.exists() else {}
    result = summary.get("Result is", "")
    metric_name = _metric_key(settings.scenario, summary)
    completions = sorted(sut.completions)
    start = sut.first_issue_ns
    end = completions[-1][0] if completions else None
    duration_s = (end - start) / _NS if start is not None and end is not None else 0.0
    offline = settings.scenario == "offline"
    notes: list[str] = []
    if offline:
        notes.append("latencies are per batch run (Offline issues one query)")
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
        metric_value=_number(summary.get(metric_name)),
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
        loadgen_errors=_detail_errors(log_dir / "mlperf_log_detail.txt"),
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


_SUMMARY_LINE = re.compile(r"^\s*([^:*=][^:]*?)\s*:\s*(.*?)\s*$")
_METRIC_KEYS = {
    "singlestream": ("90.0th percentile latency (ns)",),
    "multistream": ("99.0th percentile latency (ns)",),
    "server": ("Completed samples per second", "Scheduled samples per second"),
    "offline": ("Samples per second",),
}


def parse_summary(text: str) -> dict[str, str]:
    """``key : value`` lines of mlperf_log_summary.txt; bullet sections joined under their title.

    The first occurrence of a key wins, so "Result is" and the reported metric come from the top
    block. Bullets ("Recommendations:", "Early Stopping Result:") are joined into one value.
    """
    out: dict[str, str] = {}
    section: str | None = None
    bullets: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("="):
            section = None
            continue
        if line.startswith("*"):
            body = line.lstrip("* ").strip()
            if section is not None:
                bullets.setdefault(section, []).append(body)
            match = _SUMMARY_LINE.match(body)
            if match and match.group(2):
                out.setdefault(match.group(1), match.group(2))
            continue
        if section is not None and not line.endswith(":") and ":" not in line:
            # a wrapped bullet (" with the run being successful if ...")
            if bullets.get(section):
                bullets[section][-1] += " " + line
            continue
        match = _SUMMARY_LINE.match(line)
        if not match:
            continue
        key, value = match.groups()
        if not value:
            section = key
            continue
        out.setdefault(key, value)
    for title, lines in bullets.items():
        out.setdefault(title, " ".join(lines))
    return out


def _metric_key(scenario: str, summary: Mapping[str, str]) -> str:
    for key in _METRIC_KEYS[scenario]:
        if key in summary:
            return key
    # LoadGen spells the percentile after the settings ("90.0th" at the default percentile)
    for key in summary:
        if "percentile latency" in key and key[0].isdigit() and "th " in key:
            return key
    return _METRIC_KEYS[scenario][0]


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.split()[0])
    except (ValueError, IndexError):
        return None


def _detail_errors(path: Path) -> tuple[str, ...]:
    if not path.exists():
        return ()
    errors: list[str] = []
    with path.open() as handle:
        for line in handle:
            if '"is_error": true' not in line:
                continue
            try:
                record = json.loads(line.partition(":::MLLOG")[2])
            except json.JSONDecodeError:
                continue
            errors.append(str(record.get("value", "")))
    return tuple(errors)


# --- Server QPS search ----------------------------------------------------------------------


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
    pool: SamplePool,
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
