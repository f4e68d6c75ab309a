"""The system under test: LoadGen's queries run on a Session, batched, and timed as they run.

`calibrate` times the same code path directly (LoadGen stubbed out) so that LoadGen can be told
what latency or throughput to expect.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from crossinfer.backends.base import InputPlacement, Session, StagedLane
from crossinfer.bench.pool import SamplePool, StagedPool, as_staged
from crossinfer.bench.settings import Calibration, LoadGenSettings
from crossinfer.errors import CrossinferError, InferenceError, short_message

__all__ = ["WORKER_JOIN_S", "DryLoadGen", "Sut", "calibrate"]

WORKER_JOIN_S = 30.0


def calibrate(
    session: Session,
    pool: SamplePool | StagedPool,
    *,
    batch_size: int = 1,
    instances: int = 1,
    budget_s: float = 0.3,
) -> Calibration:
    """Time the session directly for about `budget_s` (after one warm-up run of each shape).

    Every run goes through the staged pool's lanes as the SUT's do, so that the cost of
    building batches (and of copying them to a device) is in the figure LoadGen is told to expect.
    A plain `SamplePool` is staged as numpy here.
    """
    staged = as_staged(pool, session)
    indices = [i % len(staged) for i in range(batch_size)]
    try:
        lane = staged.lane(0)
        lane.run([0])
        if batch_size > 1:
            lane.run(indices)
        latency = _median_run_ns(lane, [0], budget_s / 3)
        batch_latency = latency if batch_size == 1 else _median_run_ns(lane, indices, budget_s / 3)
        throughput = _threaded_throughput(session, staged, indices, instances, budget_s / 3)
    except CrossinferError:
        raise
    except Exception as exc:
        raise InferenceError(
            f"session.run failed while calibrating: {type(exc).__name__}: {short_message(exc)}"
        ) from exc
    return Calibration(latency, batch_latency, batch_size, throughput, instances)


def _median_run_ns(lane: StagedLane, indices: list[int], budget_s: float) -> float:
    times: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        t0 = time.perf_counter_ns()
        lane.run(indices)
        times.append(time.perf_counter_ns() - t0)
    return float(statistics.median(times))


def _threaded_throughput(
    session: Session, pool: StagedPool, indices: list[int], instances: int, budget_s: float
) -> float:
    # The batches go through the SUT's own code path (batches built, responses built,
    # books kept) with LoadGen stubbed out: for a small model that overhead is most of the cost.
    settings = LoadGenSettings(scenario="offline", batch_size=len(indices), instances=instances)
    sut = Sut(DryLoadGen(), session, pool, settings)
    deadline = time.perf_counter() + budget_s

    def loop(worker: int) -> None:
        runs = 0
        while sut.error is None and (runs < 2 or (time.perf_counter() < deadline and runs < 400)):
            query = _Query(0, len(indices))
            sut._process([(i, index, query) for i, index in enumerate(indices)], worker=worker)
            runs += 1

    t0 = time.perf_counter()
    threads = [
        threading.Thread(target=loop, args=(worker,), daemon=True) for worker in range(instances)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if sut.error is not None:
        raise sut.error
    return sut.samples_completed / max(time.perf_counter() - t0, 1e-9)


class DryLoadGen:
    """Stands in for mlperf_loadgen when calibrating the SUT's code path."""

    @staticmethod
    def QuerySampleResponse(sample_id: int, data: int, size: int) -> None:
        return None

    @staticmethod
    def QuerySamplesComplete(responses: list[Any]) -> None:
        return None


class _Query:
    __slots__ = ("issued_ns", "remaining")

    def __init__(self, issued_ns: int, remaining: int) -> None:
        self.issued_ns = issued_ns
        self.remaining = remaining


_Item = tuple[int, int, _Query]  # LoadGen response id, sample index, the query it belongs to


class _Chunk:
    """One batch's worth of an Offline query's samples, converted to `_Item`s by the worker
    that takes it, not by LoadGen's thread: converting all of a run's samples at once (280,000
    at ResNet-50's speed on an H200, a third of a second of Python here) held the GIL against
    the workers through the run's first seconds."""

    __slots__ = ("_query", "_samples", "_start", "_stop")

    def __init__(self, samples: Sequence[Any], start: int, stop: int, query: _Query) -> None:
        self._samples, self._start, self._stop, self._query = samples, start, stop, query

    def items(self) -> list[_Item]:
        query = self._query
        return [(int(s.id), int(s.index), query) for s in self._samples[self._start : self._stop]]


def _items(entry: list[_Item] | _Chunk) -> list[_Item]:
    return entry.items() if isinstance(entry, _Chunk) else list(entry)


class Sut:
    """Runs LoadGen's queries on a Session; never lets an exception reach LoadGen's thread.

    An exception escaping a callback would terminate the process from inside LoadGen, and an
    uncompleted sample would make LoadGen wait forever: so every failure completes its samples
    with empty responses, is recorded, and later samples are completed without running.
    """

    def __init__(
        self,
        lg: ModuleType | DryLoadGen,
        session: Session,
        pool: StagedPool,
        settings: LoadGenSettings,
    ) -> None:
        self._lg = lg
        self._session = session
        self._pool = pool
        self._settings = settings
        self._batch_size = settings.batch_size
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[_Item] | _Chunk | None] = queue.Queue()
        self._flushed = threading.Event()
        self._workers: list[threading.Thread] = []
        self.inline = settings.scenario in ("singlestream", "multistream")
        # a staged pool (pinned or on the device) launches the next batch before this one's
        # outputs are read back: its copy and compute overlap this one's read-back
        self._prefetch = pool.placement in (InputPlacement.PINNED, InputPlacement.DEVICE)
        self.query_latencies_ns: list[int] = []
        self.batch_latencies_ns: list[int] = []
        self.batch_sizes: list[int] = []
        self.completions: list[tuple[int, int]] = []  # (time ns, samples completed)
        self.queries = 0
        self.samples_completed = 0
        self.first_issue_ns: int | None = None
        self.issue_ns = 0  # time spent in `issue` (LoadGen's thread), over all queries
        self.error: BaseException | None = None
        self.error_after_samples = 0

    def start(self) -> None:
        if self.inline:
            return
        for i in range(self._settings.instances):
            worker = threading.Thread(
                target=self._work,
                args=(i,),
                name=f"crossinfer-loadgen-worker-{i}",
                daemon=True,
            )
            worker.start()
            self._workers.append(worker)

    def stop(self) -> bool:
        """Stop the workers; False when one did not finish in time."""
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + WORKER_JOIN_S
        for worker in self._workers:
            worker.join(max(deadline - time.monotonic(), 0.0))
        return not any(worker.is_alive() for worker in self._workers)

    # LoadGen calls these two on its own threads.

    def issue(self, query_samples: Sequence[Any]) -> None:
        samples = list(query_samples)
        handed = 0  # samples handed to whoever completes them (the queue, or _process)
        now = time.perf_counter_ns()
        try:
            scenario = self._settings.scenario
            with self._lock:
                if self.first_issue_ns is None:
                    self.first_issue_ns = now
                if scenario != "offline":
                    self.queries += len(samples) if scenario == "server" else 1
            if scenario == "server":
                # Server queries are single samples; each one is its own query to time.
                for sample in samples:
                    self._queue.put([(int(sample.id), int(sample.index), _Query(now, 1))])
                    handed += 1
                return
            query = _Query(now, len(samples))
            step = self._batch_size
            if self.inline:
                items = [(int(s.id), int(s.index), query) for s in samples]
                chunks = [items[i : i + step] for i in range(0, len(items), step)]
                handed = len(samples)  # _process completes every sample, whatever happens
                for i, chunk in enumerate(chunks):
                    self._process(chunk, chunks[i + 1] if i + 1 < len(chunks) else None)
                return
            # an Offline query holds every sample of the run: the workers convert their own
            # batches (`_Chunk`), so this thread hands the query over at once
            for start in range(0, len(samples), step):
                stop = min(start + step, len(samples))
                self._queue.put(_Chunk(samples, start, stop, query))
                handed = stop
        except BaseException as exc:  # see the class docstring: never raise into LoadGen
            self._record_error(exc)
            self._complete_ids([int(s.id) for s in samples[handed:]])
        finally:
            with self._lock:
                self.issue_ns += time.perf_counter_ns() - now

    def flush(self) -> None:
        # No more queries are coming: stop waiting for a batch to fill.
        self._flushed.set()

    # internals

    def _work(self, worker: int) -> None:
        delay_s = self._settings.max_queue_delay_ms / 1000
        dynamic = self._settings.scenario == "server" and self._batch_size > 1
        # a chunk (or the stop sentinel, None) taken from the queue early: its copy started
        taken_ahead = False
        ahead: list[_Item] | None = None
        while True:
            first = ahead if taken_ahead else self._queue.get()
            taken_ahead, ahead = False, None
            if first is None:
                return
            items = _items(first)
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
                    items.extend(_items(more))
            batches = [
                items[i : i + self._batch_size] for i in range(0, len(items), self._batch_size)
            ]
            if self._prefetch and self._settings.scenario == "offline" and not stop:
                # Offline's chunks wait in the queue: take the next one now so that its copy
                # overlaps this one's compute. Not Server's queries: one taken early here would
                # wait for this batch while another worker could run it at once.
                try:
                    taken = self._queue.get_nowait()
                    ahead = None if taken is None else _items(taken)
                    taken_ahead = True
                except queue.Empty:
                    pass
            for i, batch in enumerate(batches):
                following = batches[i + 1] if i + 1 < len(batches) else ahead
                self._process(batch, following, worker=worker)
            if stop:
                return

    def _indices(self, items: Sequence[_Item]) -> list[int]:
        return self._pool.padded(
            [index for _, index, _ in items], self._batch_size, self._settings.scenario
        )

    def _process(
        self, items: list[_Item], following: Sequence[_Item] | None = None, *, worker: int = 0
    ) -> None:
        """Run one batch on `worker`'s lane and complete its samples; never raises.
        `following`: the batch that runs next on this worker, whose copy may start while this
        one computes. The inline scenarios run one query at a time, on worker 0's lane."""
        started = time.perf_counter_ns()
        n = len(items)
        first: np.ndarray | None = None
        if self.error is None:
            try:
                indices = self._indices(items)
                prefetch = self._indices(following) if following and self._prefetch else None
                outputs = self._pool.lane(worker).run(indices, prefetch=prefetch)
                first = _first_output_rows(outputs, n, len(indices))
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


def _first_output_rows(
    outputs: Mapping[str, np.ndarray], n: int, ran: int | None = None
) -> np.ndarray | None:
    # LoadGen only needs a response per sample; the first output's rows are real bytes to point
    # at. An output without a batch dimension of `ran` (n, or the padded size the batch ran at)
    # cannot be split: answer with empty buffers. Padding rows are dropped.
    if not outputs:
        return None
    first = np.asarray(next(iter(outputs.values())))
    if first.ndim == 0 or first.shape[0] != (ran or n):
        return None
    return np.ascontiguousarray(first[:n])
