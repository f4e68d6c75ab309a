"""Per-model dynamic batcher with Triton's semantics: queue, group compatible requests, run off-loop.

Written once for asyncio; compute runs in a thread pool (one session per worker) so the event loop
that answers health probes and new requests never blocks on a model. The one exception is a batch
that is all there is to do and whose kind (same session, rows and shapes, on the CPU) last ran in
under INLINE_MAX_NS: it runs on the loop, because handing it to a thread and back costs more
than it does (a near-zero model at one request at a time).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossinfer.backends.base import Session
from crossinfer.errors import (
    BatcherStoppedError,
    InferenceError,
    InputError,
    QueueFullError,
    QueueTimeoutError,
    short_message,
)
from crossinfer.serve.assembly import BatchAssembler
from crossinfer.spec import BatchingSpec

__all__ = [
    "BatchSizeStats",
    "BatcherStats",
    "DurationStat",
    "DynamicBatcher",
]

INLINE_MAX_NS = 500_000
"""A batch whose kind last ran in less than this runs on the event loop when nothing else waits.

A thread hand-off (submit, wake the worker, wake the loop back, two GIL hand-overs) costs about
300 us of server CPU per request on a loaded 2-core machine (zoo:mlp, whose run itself takes
90-350 us there); a run under 0.5 ms delays a request arriving meanwhile by about what the
hand-off's own CPU would have, and a kind that once runs longer goes back to the thread."""
_INLINE_KINDS_MAX = 256  # the durations remembered (variable shapes make new kinds)

# --- statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DurationStat:
    """Triton's `{"count", "ns"}` pair."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> DurationStat:
        return DurationStat(self.count + count, self.ns + ns)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(frozen=True)
class BatchSizeStats:
    """Executions of one batch size (rows), split into Triton's three compute phases."""

    batch_size: int
    compute_input: DurationStat = DurationStat()  # concatenating the requests' tensors
    compute_infer: DurationStat = DurationStat()  # Session.run
    compute_output: DurationStat = DurationStat()  # splitting outputs back per request

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "compute_input": self.compute_input.to_dict(),
            "compute_infer": self.compute_infer.to_dict(),
            "compute_output": self.compute_output.to_dict(),
        }


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot the server turns into Triton's statistics and Prometheus metrics."""

    success: DurationStat  # request durations, enqueue to result
    fail: DurationStat
    queue: DurationStat  # time requests spent queued before their batch started
    compute_input: DurationStat
    compute_infer: DurationStat
    compute_output: DurationStat
    inference_count: int  # rows inferred (Triton counts each batch row as one inference)
    execution_count: int  # batches run
    pending: int  # requests queued now (not yet taken by an instance)
    last_inference_ms: int  # wall-clock ms since the epoch of the last finished batch; 0 if none
    failures: dict[str, int]  # reason (REJECTED, TIMEOUT, BACKEND, CANCELED) -> count
    batch_stats: tuple[BatchSizeStats, ...]  # sorted by batch_size

    def executions_by_batch_size(self) -> dict[int, int]:
        """`{batch_size: executions}`: answers "is batching even happening?" at a glance."""
        return {b.batch_size: b.compute_infer.count for b in self.batch_stats}

    def to_dict(self) -> dict[str, Any]:
        return {
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "last_inference": self.last_inference_ms,
            "pending": self.pending,
            "failures": dict(self.failures),
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [b.to_dict() for b in self.batch_stats],
        }


# --- the batcher ---------------------------------------------------------------------------

# requests batch together only when this matches: input names, dtypes and non-batch shapes
_BatchKey = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass(eq=False)
class _Request:
    feeds: dict[str, np.ndarray]
    rows: int
    key: _BatchKey
    priority: int
    enqueued_ns: int
    deadline_ns: int | None  # monotonic ns after which the request fails in the queue
    timeout_us: int
    future: asyncio.Future[dict[str, np.ndarray]] = field(repr=False)


class DynamicBatcher:
    """Queues one model's requests and runs them in batches on `instances` sessions.

    `sessions` is either the sessions to use (one worker thread each) or a zero-argument factory
    that `start()` calls `config.instances` times, off the event loop.
    """

    def __init__(
        self,
        sessions: Sequence[Session] | Callable[[], Session],
        config: BatchingSpec,
        *,
        model_name: str = "model",
        executor: Executor | None = None,
    ) -> None:
        if config.max_batch_size is None:
            raise ValueError(f"model '{model_name}': settle max_batch_size before batching")
        self.config = config
        self.max_batch_size: int = config.max_batch_size
        self.model_name = model_name
        if isinstance(sessions, Sequence):
            if not sessions:
                raise ValueError(f"model '{model_name}': the batcher needs at least one session")
            self._sessions: list[Session] = list(sessions)
            self._factory: Callable[[], Session] | None = None
        else:
            self._sessions = []
            self._factory = sessions
        self._executor = executor
        self._owns_executor = executor is None
        self._queues: list[collections.deque[_Request]] = [
            collections.deque() for _ in range(config.priority_levels)
        ]
        self._pending = 0
        self._timed = 0  # queued requests with a deadline; 0 lets the scheduler skip expiry scans
        self._free: list[int] = []
        self._assemblers: list[BatchAssembler] = []  # one per session: joins, pads, pins
        self.warmup_s: dict[int, dict[int, float]] = {}  # instance -> padded size -> seconds
        self._running: set[asyncio.Task[None]] = set()
        # (assembler, batch key, rows) -> ns its last run took, for the CPU assemblers only
        self._last_run_ns: dict[tuple[BatchAssembler, _BatchKey, int], int] = {}
        self._cpu: set[BatchAssembler] = set()
        self._wakeup: asyncio.Event | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._accepting = False
        self._stopping = False
        self._hold: int | None = None
        # statistics
        self._success = DurationStat()
        self._fail = DurationStat()
        self._queue_stat = DurationStat()
        self._inference_count = 0
        self._execution_count = 0
        self._last_inference_ms = 0
        self._failures: dict[str, int] = {}
        self._batch_stats: dict[int, BatchSizeStats] = {}

    @property
    def instances(self) -> int:
        return len(self._sessions) if self._factory is None else self.config.instances

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the sessions (from the factory), the thread pool and the scheduler task."""
        if self._scheduler is not None:
            raise RuntimeError(f"model '{self.model_name}': the batcher is already started")
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.instances, thread_name_prefix=f"crossinfer-{self.model_name}"
            )
        if self._factory is not None:
            factory = self._factory
            self._sessions = list(
                await asyncio.gather(
                    *(loop.run_in_executor(self._executor, factory) for _ in range(self.instances))
                )
            )
        self._assemblers = [
            BatchAssembler(
                session,
                max_batch_size=self.max_batch_size,
                preferred=self.config.preferred_batch_sizes,
            )
            for session in self._sessions
        ]
        self._cpu = {a for a in self._assemblers if _on_cpu(a.session)}
        # sessions that compile per shape run every padded size once before the model is ready;
        # one instance after another (a CUDA graph capture wants no other work beside it)
        self.warmup_s = {}
        for instance, assembler in enumerate(self._assemblers):
            self.warmup_s[instance] = await loop.run_in_executor(
                self._executor, _warm_up, assembler
            )
        self._free = list(range(len(self._sessions)))
        self._wakeup = asyncio.Event()
        self._accepting = True
        self._scheduler = loop.create_task(self._schedule(), name=f"batcher-{self.model_name}")

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting; with drain, finish every accepted request, else fail the queued ones.

        Batches already running always finish (a thread cannot be interrupted mid-compute).
        """
        self._accepting = False
        self._stopping = True
        self._hold = None
        if not drain:
            for level in self._queues:
                while level:
                    request = level.popleft()
                    self._dequeued(request)
                    self._fail_request(
                        request,
                        BatcherStoppedError(
                            f"model '{self.model_name}' was stopped before this request ran"
                        ),
                        "REJECTED",
                    )
        self._wake()
        if self._scheduler is not None:
            await self._scheduler
            self._scheduler = None
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # --- deterministic test hook (Triton's TRITONSERVER_DELAY_SCHEDULER) ---------------------

    def hold_until(self, n: int) -> None:
        """Form no batch until `n` requests are queued (or `release()`); timeouts still apply."""
        self._hold = n

    def release(self) -> None:
        self._hold = None
        self._wake()

    # --- requests ---------------------------------------------------------------------------

    async def infer(
        self,
        feeds: dict[str, np.ndarray],
        *,
        priority: int | None = None,
        timeout_us: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Queue one request and wait for its outputs (split from its batch along axis 0).

        Raises QueueFullError at once when the queue is full, QueueTimeoutError when the timeout
        passes in the queue, InferenceError (naming the model) when its batch fails.
        """
        if not self._accepting:
            raise BatcherStoppedError(
                f"model '{self.model_name}' is not accepting requests (stopped or not started)"
            )
        level = self._priority_level(priority)
        rows, key = self._batch_signature(feeds)
        limit = self.config.max_queue_size
        if limit and self._pending >= limit:
            self._count_failure(0, "REJECTED")
            raise QueueFullError("Exceeds maximum queue size")
        timeout = self.config.default_timeout_us if timeout_us is None else timeout_us
        if timeout < 0:
            raise InputError(f"model '{self.model_name}': timeout must be >= 0 us, got {timeout}")
        now = time.monotonic_ns()
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        request = _Request(
            feeds=feeds,
            rows=rows,
            key=key,
            priority=level,
            enqueued_ns=now,
            deadline_ns=now + timeout * 1000 if timeout else None,
            timeout_us=timeout,
            future=future,
        )
        self._queues[level - 1].append(request)
        self._pending += 1
        self._timed += request.deadline_ns is not None
        self._wake()
        try:
            return await future
        except asyncio.CancelledError:
            # the caller went away (client disconnect); the scheduler skips a done future
            if not future.done():
                future.cancel()
            raise

    def record_failure(self, ns: int, reason: str) -> None:
        """Count a request refused before it reached the queue (bad input: reason REJECTED)."""
        self._count_failure(ns, reason)

    def stats(self) -> BatcherStats:
        phases = [DurationStat(), DurationStat(), DurationStat()]
        for b in self._batch_stats.values():
            for i, stat in enumerate((b.compute_input, b.compute_infer, b.compute_output)):
                phases[i] = phases[i].add(stat.ns, stat.count)
        return BatcherStats(
            success=self._success,
            fail=self._fail,
            queue=self._queue_stat,
            compute_input=phases[0],
            compute_infer=phases[1],
            compute_output=phases[2],
            inference_count=self._inference_count,
            execution_count=self._execution_count,
            pending=self._pending,
            last_inference_ms=self._last_inference_ms,
            failures=dict(self._failures),
            batch_stats=tuple(self._batch_stats[k] for k in sorted(self._batch_stats)),
        )

    # --- validation -------------------------------------------------------------------------

    def _priority_level(self, priority: int | None) -> int:
        if priority is None or priority == 0:  # Triton: 0 means the default level
            return self.config.default_priority
        if not 1 <= priority <= self.config.priority_levels:
            raise InputError(
                f"model '{self.model_name}': priority must lie in 1..{self.config.priority_levels} "
                f"(1 is highest, 0 the default), got {priority}"
            )
        return priority

    def _batch_signature(self, feeds: dict[str, np.ndarray]) -> tuple[int, _BatchKey]:
        if not feeds:
            raise InputError(f"model '{self.model_name}': the request has no inputs")
        batching = self.max_batch_size > 0
        rows: int | None = None
        key = []
        for name in sorted(feeds):
            array = feeds[name]
            if not batching:
                key.append((name, array.dtype.str, tuple(array.shape)))
                continue
            if array.ndim == 0:
                raise InputError(
                    f"model '{self.model_name}': input '{name}' is a scalar, but the model batches "
                    f"along dim 0 (max_batch_size {self.max_batch_size}): send shape [1, ...]"
                )
            if rows is None:
                rows = int(array.shape[0])
            elif array.shape[0] != rows:
                raise InputError(
                    f"model '{self.model_name}': inputs disagree on the batch dim: input '{name}' "
                    f"has {array.shape[0]} rows, others {rows}"
                )
            key.append((name, array.dtype.str, tuple(array.shape[1:])))
        if rows is not None and not 1 <= rows <= self.max_batch_size:
            raise InputError(
                f"model '{self.model_name}': a request has {rows} rows in dim 0; the model takes "
                f"1..{self.max_batch_size} (max_batch_size)"
            )
        return rows or 1, tuple(key)

    # --- scheduling -------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _schedule(self) -> None:
        try:
            await self._schedule_forever()
        except BaseException as exc:
            # a bug here must not leave callers waiting forever: fail what is queued, refuse more
            self._accepting = False
            for level in self._queues:
                while level:
                    request = level.popleft()
                    self._dequeued(request)
                    error = BatcherStoppedError(
                        f"model '{self.model_name}': the batcher's scheduler stopped: "
                        f"{short_message(exc)}"
                    )
                    self._fail_request(request, error, "OTHER")
            raise

    async def _schedule_forever(self) -> None:
        assert self._wakeup is not None
        while True:
            self._wakeup.clear()
            now = time.monotonic_ns()
            if self._timed:
                self._expire(now)
            if self._hold is not None and self._pending >= self._hold:
                self._hold = None
            wait_ns: int | None = None
            if not self._pending:
                if self._stopping:
                    return
            elif self._hold is None and self._free:
                batch, wait_ns = self._next_batch(now)
                if batch:
                    self._dispatch(batch, now)
                    continue
            deadlines = [wait_ns] if wait_ns is not None else []
            if self._timed:
                deadlines += [r.deadline_ns - now for q in self._queues for r in q if r.deadline_ns]
            timeout = max(min(deadlines), 0) / 1e9 if deadlines else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _expire(self, now: int) -> None:
        for q in self._queues:
            expired = [r for r in q if r.deadline_ns is not None and r.deadline_ns <= now]
            for request in expired:
                q.remove(request)
                self._dequeued(request)
                self._fail_request(
                    request,
                    QueueTimeoutError(
                        f"model '{self.model_name}': request timed out in the queue after "
                        f"{request.timeout_us} us"
                    ),
                    "TIMEOUT",
                )

    def _next_batch(self, now: int) -> tuple[list[_Request], int | None]:
        """The batch to run now, or `([], ns to wait)` while an incomplete batch may still fill."""
        self._drop_cancelled()
        head = next((q[0] for q in self._queues if q), None)
        if head is None:
            return [], None
        max_rows = self.max_batch_size
        if max_rows == 0:
            return [head], None
        candidates: list[_Request] = []
        rows = 0
        full = False
        for request in (r for q in self._queues for r in q):  # priority order, FIFO in a level
            if request.key != head.key or request.future.done():
                continue
            if rows + request.rows > max_rows:
                full = True  # the next compatible request does not fit: never skip over it
                break
            candidates.append(request)
            rows += request.rows
        if full or rows == max_rows:
            return candidates, None
        # the largest preferred size reachable by a prefix of the candidates goes now (as Triton)
        preferred = set(self.config.preferred_batch_sizes)
        best, total = 0, 0
        for i, request in enumerate(candidates):
            total += request.rows
            if total in preferred:
                best = i + 1
        if best:
            return candidates[:best], None
        oldest = min(r.enqueued_ns for r in candidates)
        remaining = oldest + self.config.max_queue_delay_us * 1000 - now
        if remaining <= 0 or self._stopping:
            return candidates, None
        return [], remaining

    def _drop_cancelled(self) -> None:
        for q in self._queues:
            while q and q[0].future.done():
                request = q.popleft()
                self._dequeued(request)
                self._count_failure(time.monotonic_ns() - request.enqueued_ns, "CANCELED")

    def _dequeued(self, request: _Request) -> None:
        self._pending -= 1
        self._timed -= request.deadline_ns is not None

    def _dispatch(self, batch: list[_Request], now: int) -> None:
        for request in batch:
            self._queues[request.priority - 1].remove(request)
            self._dequeued(request)
            self._queue_stat = self._queue_stat.add(now - request.enqueued_ns)
        instance = self._free.pop()
        task = asyncio.get_running_loop().create_task(self._execute(instance, batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, instance: int, batch: list[_Request]) -> None:
        try:
            await self._run(self._assemblers[instance], batch)
        finally:
            self._free.append(instance)
            self._wake()

    async def _run(self, assembler: BatchAssembler, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        batched = self.max_batch_size > 0
        rows = sum(r.rows for r in batch)
        live = [r for r in batch if not r.future.done()]
        kind = (assembler, batch[0].key, rows)
        try:
            t0 = time.perf_counter_ns()
            parts = [r.feeds for r in batch]
            if self._inline(kind):
                outputs, input_ns = assembler.run(parts)
                t2 = time.perf_counter_ns()
                self._last_run_ns[kind] = t2 - t0
            else:
                # joined (and padded, pinned) in the worker thread, never on the event loop
                outputs, input_ns, run_ns = await loop.run_in_executor(
                    self._executor, _timed_run, assembler, parts
                )
                t2 = time.perf_counter_ns()
                if assembler in self._cpu:
                    if len(self._last_run_ns) >= _INLINE_KINDS_MAX:
                        self._last_run_ns.clear()
                    self._last_run_ns[kind] = run_ns
            t1 = t0 + input_ns
            results = self._split(outputs, batch, rows) if batched else [outputs]
            t3 = time.perf_counter_ns()
        except InputError as exc:
            if len(live) > 1:
                # values only the runtime checks (text that is not UTF-8): find whose they are
                # by running each request alone, so one bad request never fails its batch-mates
                for request in live:
                    await self._run(assembler, [request])
                return
            for request in live:
                refused = InputError(f"model '{self.model_name}': {exc}")
                self._fail_request(request, refused, "REJECTED")
        except Exception as exc:
            for request in live:
                error = InferenceError(
                    f"model '{self.model_name}' failed on a batch of {rows} row(s): "
                    f"{short_message(exc)}"
                )
                error.__cause__ = exc
                self._fail_request(request, error, "BACKEND")
        else:
            self._record_batch(rows, t1 - t0, t2 - t1, t3 - t2)
            end = time.monotonic_ns()
            for request, result in zip(batch, results, strict=True):
                if request.future.done():  # cancelled while running
                    self._count_failure(end - request.enqueued_ns, "CANCELED")
                    continue
                request.future.set_result(result)
                self._success = self._success.add(end - request.enqueued_ns)

    def _inline(self, kind: tuple[BatchAssembler, _BatchKey, int]) -> bool:
        """Run this batch on the loop: its kind ran fast last time, nothing else is queued or
        running (so no request waits behind it but those arriving meanwhile)."""
        last = self._last_run_ns.get(kind)
        return (
            last is not None
            and last < INLINE_MAX_NS
            and not self._pending
            and len(self._running) <= 1
            and not self._stopping
        )

    def _split(
        self, outputs: dict[str, np.ndarray], batch: list[_Request], rows: int
    ) -> list[dict[str, np.ndarray]]:
        if len(batch) == 1:
            return [outputs]
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != rows:
                raise InferenceError(
                    f"output '{name}' has shape {list(array.shape)}, which does not split into the "
                    f"batch of {rows} rows along dim 0"
                )
        offsets = np.cumsum([r.rows for r in batch])[:-1]
        parts = {name: np.split(array, offsets, axis=0) for name, array in outputs.items()}
        return [{name: parts[name][i] for name in outputs} for i in range(len(batch))]

    # --- statistics helpers -----------------------------------------------------------------

    def _record_batch(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        old = self._batch_stats.get(rows) or BatchSizeStats(batch_size=rows)
        self._batch_stats[rows] = BatchSizeStats(
            batch_size=rows,
            compute_input=old.compute_input.add(input_ns),
            compute_infer=old.compute_infer.add(infer_ns),
            compute_output=old.compute_output.add(output_ns),
        )
        self._inference_count += rows
        self._execution_count += 1
        self._last_inference_ms = time.time_ns() // 1_000_000

    def _fail_request(self, request: _Request, error: Exception, reason: str) -> None:
        if request.future.done():
            return
        request.future.set_exception(error)
        self._count_failure(time.monotonic_ns() - request.enqueued_ns, reason)

    def _count_failure(self, ns: int, reason: str) -> None:
        self._fail = self._fail.add(ns)
        self._failures[reason] = self._failures.get(reason, 0) + 1


def _timed_run(
    assembler: BatchAssembler, parts: list[dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], int, int]:
    """`assembler.run` in the worker thread, and the nanoseconds it took there."""
    t0 = time.perf_counter_ns()
    outputs, input_ns = assembler.run(parts)
    return outputs, input_ns, time.perf_counter_ns() - t0


def _on_cpu(session: Session) -> bool:
    """Whether the session computes on the host CPU (a device session keeps its own thread:
    streams and graphs may be bound to it)."""
    target = getattr(session, "target", None)
    return getattr(target, "device", None) == "cpu"


def _warm_up(assembler: BatchAssembler) -> dict[int, float]:
    """Run each padded batch size once from zeros; {} when the session needs none, or when an
    input's non-batch dims are not fixed (its shapes come from the requests)."""
    if not assembler.sizes:
        return {}
    example: dict[str, np.ndarray] = {}
    for spec in assembler.session.inputs:
        dims = [d for d in list(spec.shape or [])[1:] if isinstance(d, int) and d > 0]
        if len(dims) != len(spec.shape or []) - 1:
            return {}
        example[spec.name] = np.zeros((1, *dims), dtype=spec.numpy_dtype)
    return assembler.warm_up(example)
