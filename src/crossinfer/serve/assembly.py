"""One batch from several requests, built in the worker thread that runs it.

The batcher hands each worker the requests' feeds; `BatchAssembler` joins them there, not on the
event loop (a batch of 256 ResNet-50 images is 154 MB: joining it on the loop stalls every other
request for tens of milliseconds). Where the session takes pinned host memory (torch on CUDA),
the rows are written straight into page-locked buffers, so the copy to the device is one
asynchronous DMA instead of a staged, pageable copy. Where the session compiles or captures one
graph per input shape (torch compile / CUDA graphs), a batch is padded to the next of a few fixed
sizes (powers of two up to the maximum batch size, and the preferred sizes), which are all run
once before the model reports ready, so no request ever waits for a compile. Where every row is
already in page-locked memory (a system shared-memory region the server registered with CUDA),
the session joins them on the device instead (`run_parts`: one DMA per request, no host copy).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from crossinfer.backends.base import InputPlacement, Session, StagingSession

__all__ = ["BatchAssembler", "padded_sizes"]

# A batch at least this large is joined by several threads (numpy copies release the GIL): on
# the H200 server one thread joined 154 MB of FP32 (256 ResNet-50 images) in 21.6 ms, longer
# than the upload, compute and read-back of that batch together (13.1 ms).
PARALLEL_JOIN_MIN_BYTES = 8 << 20
_JOIN_PIECE_BYTES = 4 << 20  # a large part is split into row ranges of about this size
_join_pool: ThreadPoolExecutor | None = None
_join_pool_lock = threading.Lock()


def join_threads() -> int:
    """Threads that join one large batch: half the cores, at most 8; 1 (no pool) below 4 cores,
    where the copies would only take turns with the compute's own threads."""
    cores = os.cpu_count() or 1
    return 1 if cores < 4 else min(8, cores // 2)


def _pool() -> ThreadPoolExecutor | None:
    global _join_pool
    threads = join_threads()
    if threads <= 1:
        return None
    with _join_pool_lock:
        if _join_pool is None:
            _join_pool = ThreadPoolExecutor(threads, thread_name_prefix="crossinfer-join")
        return _join_pool


def copy_rows(
    copies: Sequence[tuple[np.ndarray, np.ndarray]], *, threads: int | None = None
) -> None:
    """`dst[...] = src` for each (dst, src) pair; large sets in parallel, in row ranges of a
    few MB spread over the join threads (`threads` overrides how many)."""
    total = sum(dst.nbytes for dst, _ in copies)
    pool = _pool() if threads is None else None
    workers = join_threads() if threads is None else threads
    if workers <= 1 or total < PARALLEL_JOIN_MIN_BYTES:
        for dst, src in copies:
            dst[...] = src
        return
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    for dst, src in copies:
        rows = dst.shape[0] if dst.ndim else 1
        row_bytes = dst.nbytes // max(rows, 1)
        step = max(1, _JOIN_PIECE_BYTES // max(row_bytes, 1))
        if dst.ndim == 0 or rows <= step:
            pieces.append((dst, src))
            continue
        pieces.extend((dst[i : i + step], src[i : i + step]) for i in range(0, rows, step))

    def run(group: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        for dst, src in group:
            dst[...] = src

    groups = [pieces[i::workers] for i in range(workers)]
    if pool is not None:
        futures = [pool.submit(run, g) for g in groups[1:] if g]
        run(groups[0])  # this thread copies its share meanwhile
        for future in futures:
            future.result()  # re-raises a failed copy here
        return
    with ThreadPoolExecutor(workers) as own:  # an explicit thread count (tests, benchmarks)
        futures = [own.submit(run, g) for g in groups if g]
        for future in futures:
            future.result()


def padded_sizes(max_batch_size: int, preferred: Sequence[int] = ()) -> tuple[int, ...]:
    """The batch sizes a fixed-shape session runs: powers of two below the maximum, the maximum
    and the preferred sizes (Triton's preferred_batch_size is where batches tend to land)."""
    sizes = {max_batch_size, *(p for p in preferred if 1 <= p <= max_batch_size)}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class BatchAssembler:
    """Joins requests' rows into one batch for one session: pinned, padded where it pays.

    `run(parts)` returns the session's outputs for exactly the rows given (padding rows are cut
    off) and the nanoseconds spent building the batch.
    """

    def __init__(
        self, session: Session, *, max_batch_size: int, preferred: Sequence[int] = ()
    ) -> None:
        self.session = session
        staging = session.input_staging() if isinstance(session, StagingSession) else None
        batched = max_batch_size > 0
        self.sizes: tuple[int, ...] = ()
        if staging is not None and staging.fixed_shapes and batched:
            self.sizes = padded_sizes(max_batch_size, preferred)
        self._empty: Callable[[tuple[int, ...], np.dtype], np.ndarray] = np.empty
        self.pinned = False
        pinned_empty = getattr(session, "pinned_empty", None)
        if staging is not None and InputPlacement.PINNED in staging.placements and pinned_empty:
            self._empty = pinned_empty
            self.pinned = True
        self._buffers: dict[str, np.ndarray] = {}  # pinned batch buffers, reused
        # a session that joins pinned rows on its device (torch on CUDA: `run_parts`)
        self._run_parts = getattr(session, "run_parts", None)
        self._host_pinned: Callable[[np.ndarray], bool] | None = getattr(
            session, "host_pinned", None
        )

    def _all_pinned(self, parts: Sequence[Mapping[str, np.ndarray]]) -> bool:
        pinned = self._host_pinned
        if pinned is None or self._run_parts is None or not parts:
            return False
        return all(pinned(array) for part in parts for array in part.values())

    def size_for(self, rows: int) -> int:
        """The batch size `rows` rows run at: the next fixed size, or `rows` itself."""
        for size in self.sizes:
            if size >= rows:
                return size
        return rows

    def run(self, parts: Sequence[Mapping[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], int]:
        start = time.perf_counter_ns()
        rows = sum(int(next(iter(p.values())).shape[0]) for p in parts) if parts else 0
        size = self.size_for(rows)
        if self._all_pinned(parts):
            # rows already in page-locked memory (a shared-memory region registered with CUDA)
            # go straight to their place in a device batch: no join on the host at all
            outputs = self._run_parts(parts, size)  # type: ignore[misc]
            built = 0
        else:
            if len(parts) == 1 and size == rows and not self.pinned:
                feeds = dict(parts[0])
            else:
                feeds = {
                    name: self._join(name, [p[name] for p in parts], size) for name in parts[0]
                }
            built = time.perf_counter_ns() - start
            outputs = self.session.run(feeds)
        if size != rows:
            outputs = {
                name: value[:rows] if value.ndim and value.shape[0] == size else value
                for name, value in outputs.items()
            }
        return outputs, built

    def warm_up(self, example: Mapping[str, np.ndarray]) -> dict[int, float]:
        """Run every fixed size once (compile / capture), from one request's rows; seconds each."""
        times: dict[int, float] = {}
        for size in self.sizes:
            start = time.perf_counter()
            self.run([{name: _rows(value, size) for name, value in example.items()}])
            times[size] = time.perf_counter() - start
        return times

    def _join(self, name: str, arrays: list[np.ndarray], size: int) -> np.ndarray:
        first = arrays[0]
        if not self.pinned:
            # a fresh array each batch: a runtime may hand back outputs that alias its inputs
            # (an Identity), and those go to clients while the next batch is being built
            rows = sum(a.shape[0] for a in arrays)
            if size > rows:
                arrays = [*arrays, np.repeat(arrays[-1][-1:], size - rows, axis=0)]
            return np.concatenate(arrays, axis=0)
        shape = (size, *first.shape[1:])
        held = self._buffers.get(name)
        if held is None or held.shape[1:] != shape[1:] or held.dtype != first.dtype:
            held = None
        if held is None or held.shape[0] < size:
            held = self._buffers[name] = self._empty((max(size, 1), *first.shape[1:]), first.dtype)
        out = held[:size]
        at = 0
        copies = []
        for array in arrays:
            copies.append((out[at : at + array.shape[0]], array))
            at += array.shape[0]
        copy_rows(copies)
        if at < size:
            out[at:] = out[at - 1]  # padding repeats the last real row: any model takes it
        return out


def _rows(value: np.ndarray, n: int) -> np.ndarray:
    """`value` with its first axis repeated or cut to `n` rows."""
    if value.ndim == 0 or value.shape[0] == 0:
        return value
    reps = -(-n // value.shape[0])
    return np.concatenate([value] * reps, axis=0)[:n] if reps > 1 else value[:n]
