"""The sample pool: LoadGen's query sample library (QSL), and the pool staged for one session.

`SamplePool` holds single-sample feeds; `StagedPool` is that pool staged once (LoadGen's
LoadSamplesToRam) in the dtype and memory the session takes, from which batches are built by index.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossinfer.backends.base import (
    InputPlacement,
    InputStaging,
    StagedInputs,
    StagedLane,
    StagingSession,
)
from crossinfer.bench.settings import LoadGenSettings
from crossinfer.check.inputs import random_inputs
from crossinfer.errors import InputError, UsageError
from crossinfer.model import TensorSpec

__all__ = [
    "INPUTS_ON_DEVICE",
    "SamplePool",
    "StagedPool",
    "as_staged",
    "check_batchable",
    "default_placement",
    "pad_size",
    "run_shapes",
]


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


# --- staging --------------------------------------------------------------------------------

_ROWS = "rows"  # every sample has a leading dim of 1: staged as one (N, ...) array, rows = samples
_STACKED = "stacked"  # same shape, no leading 1 (batch size 1 only): staged as (N, *shape)
_RAGGED = "ragged"  # shapes differ between samples: kept per sample, batches concatenated


def default_placement(session: object) -> InputPlacement:
    """The placement a run uses unless told otherwise: pinned host memory where the session
    takes it (a GPU), else numpy; device-resident only when asked (it measures the device)."""
    takes = session.input_staging().placements if isinstance(session, StagingSession) else ()
    return InputPlacement.PINNED if InputPlacement.PINNED in takes else InputPlacement.NUMPY


def pad_size(n: int, batch_size: int, scenario: str) -> int:
    """The batch shape `n` samples run at when the session compiles per shape: Offline and
    MultiStream pad a short last batch to the batch size; Server pads to the next power of two
    (a dynamic batcher's batches take any size), so that the shapes can be warmed up."""
    if n >= batch_size:
        return n
    if scenario == "server":
        return min(1 << (n - 1).bit_length(), batch_size)
    if scenario == "singlestream":
        return n
    return batch_size


def run_shapes(settings: LoadGenSettings, *, fixed_shapes: bool) -> tuple[int, ...]:
    """Every batch shape a run of `settings` uses (fixed_shapes: partial batches padded,
    `pad_size`); without padding, the shapes known in advance: a dynamic batcher's partial
    batches and Offline's short last batch take sizes only the run decides."""
    b = settings.batch_size
    if settings.scenario == "singlestream":
        return (1,)
    if settings.scenario == "multistream":
        per = settings.multistream_samples_per_query
        full, rest = divmod(per, b)
        sizes = {b} if full else set()
        if rest:
            sizes.add(b if fixed_shapes else rest)
        return tuple(sorted(sizes))
    if settings.scenario == "server" and b > 1:
        if fixed_shapes:
            return tuple(sorted({pad_size(n, b, "server") for n in range(1, b + 1)}))
        return (1, b)
    return (b,)


class StagedPool:
    """A `SamplePool` staged once for one session, as LoadGen's LoadSamplesToRam asks.

    Each input becomes one contiguous array (rows along axis 0) in the dtype the session computes
    in (FP16 for an FP16 variant, where the session says it casts inputs itself: the cast is
    preprocessing, done once); where the session takes them, the rows are also copied into pinned
    host or device memory by the session's own staging hook. A batch is built by index: a view
    when the indices are consecutive, else one `np.take` into the lane's preallocated buffer;
    nothing is concatenated per batch. Each worker gets its own lane (buffers, copy stream),
    created and warmed before LoadGen starts.
    """

    def __init__(
        self,
        pool: SamplePool,
        session: object,
        *,
        placement: InputPlacement = InputPlacement.NUMPY,
    ) -> None:
        self.pool = pool
        self.session = session
        self.asked = InputPlacement(placement)
        staging = session.input_staging() if isinstance(session, StagingSession) else InputStaging()
        self.fixed_shapes = staging.fixed_shapes
        self._layouts = {name: _layout(pool, name) for name in pool.names}
        first = pool.samples[0]
        self.host_dtypes = {
            name: dtype
            for name, dtype in staging.host_dtypes.items()
            if name in first
            and np.issubdtype(first[name].dtype, np.floating)
            and np.dtype(dtype) != first[name].dtype
        }
        self.placement, self.reason = _choose(self.asked, staging, self._layouts)
        self.source_dtypes = {name: first[name].dtype.name for name in pool.names}
        self.dtypes: dict[str, str] = {}  # input -> dtype staged in (known once loaded)
        self.stage_s = 0.0
        self.warmup_s: dict[int, float] = {}
        self.steady_warmup: tuple[int, float] | None = None  # (batches, seconds) before LoadGen
        self._arrays: dict[str, Any] | None = None
        self._staged: StagedInputs | None = None
        self._lock = threading.Lock()
        self._lanes: dict[int, StagedLane] = {}

    def __len__(self) -> int:
        return len(self.pool)

    @property
    def names(self) -> tuple[str, ...]:
        return self.pool.names

    def load(self, _indices: Sequence[int] | None = None) -> None:
        """LoadGen's LoadSamplesToRam: stage every sample, once (later calls return at once)."""
        with self._lock:
            if self._arrays is not None:
                return
            started = time.perf_counter()
            arrays: dict[str, Any] = {}
            for name in self.pool.names:
                samples = [s[name] for s in self.pool.samples]
                dtype = np.dtype(self.host_dtypes.get(name, samples[0].dtype))
                layout = self._layouts[name]
                if layout == _RAGGED:
                    arrays[name] = samples
                    continue
                shape = samples[0].shape[1:] if layout == _ROWS else samples[0].shape
                staged = np.empty((len(samples), *shape), dtype=dtype)
                for i, sample in enumerate(samples):
                    staged[i] = sample[0] if layout == _ROWS else sample
                arrays[name] = staged
            self.dtypes = {
                name: (a.dtype.name if isinstance(a, np.ndarray) else a[0].dtype.name)
                for name, a in arrays.items()
            }
            if self.placement is not InputPlacement.NUMPY:
                assert isinstance(self.session, StagingSession)
                staged_inputs = self.session.stage_inputs(arrays, placement=self.placement)
                self.dtypes.update(getattr(staged_inputs, "dtypes", {}))
                self._staged = staged_inputs
            self._arrays = arrays
            self.stage_s = time.perf_counter() - started

    def batch(
        self, indices: Sequence[int], *, buffers: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The samples at `indices` as host feeds, equal to concatenating them along axis 0.

        Consecutive indices give views of the staged arrays; others are gathered into
        `buffers` (input -> preallocated array, grown as needed; a fresh array without them).
        """
        self.load()
        arrays = self._arrays
        assert arrays is not None
        n = len(indices)
        start = indices[0]
        consecutive = n == 1 or (
            indices[-1] - start == n - 1 and all(b - a == 1 for a, b in itertools.pairwise(indices))
        )
        feeds: dict[str, np.ndarray] = {}
        for name, array in arrays.items():
            layout = self._layouts[name]
            if layout == _ROWS:
                if consecutive:
                    feeds[name] = array[start : start + n]
                    continue
                out = _buffer(buffers, name, array, n)
                np.take(array, indices, axis=0, out=out, mode="clip")
                feeds[name] = out
            elif layout == _STACKED and n == 1:
                feeds[name] = array[start]
            elif layout == _STACKED:
                feeds[name] = np.concatenate([array[i] for i in indices], axis=0)
            else:
                feeds[name] = (
                    array[start] if n == 1 else np.concatenate([array[i] for i in indices], axis=0)
                )
        return feeds

    def lane(self, worker: int = 0) -> StagedLane:
        """Worker `worker`'s lane: its own batch buffers (and, staged on a device, its own copy
        stream). One worker uses a lane at a time; the lane outlives the run, for the next."""
        held = self._lanes.get(worker)  # every batch asks: no lock once the lane exists
        if held is not None:
            return held
        self.load()
        with self._lock:
            lane = self._lanes.get(worker)
            if lane is None:
                lane = _NumpyLane(self) if self._staged is None else self._staged.lane()
                self._lanes[worker] = lane
        return lane

    def padded(self, indices: Sequence[int], batch_size: int, scenario: str) -> list[int]:
        """`indices`, padded with the rows that follow them to the shape the run uses
        (`pad_size`) where the session runs fixed shapes; the extra rows' outputs are dropped."""
        n = len(indices)
        size = pad_size(n, batch_size, scenario) if self.fixed_shapes else n
        if size == n:
            return list(indices)
        total = len(self.pool)
        return [*indices, *((indices[-1] + k) % total for k in range(1, size - n + 1))]

    def warm_up(self, sizes: Sequence[int], *, workers: int = 1) -> dict[int, float]:
        """Run each batch size twice before LoadGen starts; the first run's time (compile or
        capture included, for sessions that do either) is kept per size, once per pool. Every
        other worker's lane runs the largest size once, so that its buffers exist already."""
        lane = self.lane(0)
        for size in sizes:
            if size in self.warmup_s:
                continue
            indices = self._rows(size)
            started = time.perf_counter()
            lane.run(indices)
            self.warmup_s[size] = time.perf_counter() - started
            lane.run(indices)  # what the first run allocated lazily is in place from now on
        if sizes and self._staged is not None:  # numpy lanes' buffers cost nothing to grow
            largest = self._rows(max(sizes))
            # a staged pool may ask to run at full load before LoadGen starts (torch on CUDA:
            # `steady_warmup_s`): a device that idled while the model compiled starts slow, and
            # on the H200 the first window of every run was half the others without it
            seconds = float(getattr(self._staged, "steady_warmup_s", 0.0))
            if seconds > 0 and not self.steady_warmup:
                started = time.perf_counter()
                runs = 0
                while runs < STEADY_WARMUP_RUNS and time.perf_counter() - started < seconds:
                    lane.run(largest)
                    runs += 1
                self.steady_warmup = (runs, time.perf_counter() - started)
            for worker in range(1, workers):
                if worker not in self._lanes:
                    self.lane(worker).run(largest)
        return {size: self.warmup_s[size] for size in sizes}

    def _rows(self, size: int) -> list[int]:
        # not consecutive when the pool allows it: the gather path, not the view, is warmed
        total = len(self.pool)
        return [(2 * i) % total for i in range(size)] if size > 1 else [0]

    def describe(self) -> dict[str, Any]:
        """How the inputs were staged, for the result (placement, dtypes, casts, why not asked)."""
        cast = {
            name: f"{self.source_dtypes[name]} -> {dtype}"
            for name, dtype in self.dtypes.items()
            if dtype != self.source_dtypes[name]
        }
        info: dict[str, Any] = {
            "placement": self.placement.value,
            "dtypes": dict(self.dtypes),
            "stage_s": round(self.stage_s, 3),
        }
        if cast:
            info["cast"] = cast
        if self.fixed_shapes:
            info["fixed_shapes"] = True
        if self.reason:
            info["asked"] = self.asked.value
            info["reason"] = self.reason
        return info

    def notes(self) -> list[str]:
        """What a reader of the result must know about its inputs."""
        notes = []
        if self.placement is InputPlacement.DEVICE:
            notes.append(INPUTS_ON_DEVICE)
        if self.steady_warmup:
            runs, seconds = self.steady_warmup
            notes.append(
                f"warm-up before LoadGen: {runs} batches of the largest size ({seconds:.1f} s)"
            )
        cast = self.describe().get("cast", {})
        if cast:
            what = ", ".join(f"{name} {how}" for name, how in cast.items())
            notes.append(f"inputs cast once when staged ({what}): part of preprocessing")
        if self.reason:
            notes.append(self.reason)
        return notes

    def close(self) -> None:
        if self._staged is not None:
            self._staged.close()


def as_staged(pool: SamplePool | StagedPool, session: object) -> StagedPool:
    """`pool` itself when staged already (for this session), else staged as numpy."""
    if isinstance(pool, StagedPool):
        return pool
    return StagedPool(pool, session)


STEADY_WARMUP_RUNS = 200  # at most, within the staged pool's steady_warmup_s

INPUTS_ON_DEVICE = (
    "inputs on device: measures the device, not the system (no host-to-device copies)"
)


class _NumpyLane:
    """Host feeds built by index into this lane's own buffers, run with `Session.run`."""

    def __init__(self, staged: StagedPool) -> None:
        self._staged = staged
        self._run = staged.session.run  # type: ignore[attr-defined]
        self._buffers: dict[str, np.ndarray] = {}

    def run(
        self, indices: Sequence[int], *, prefetch: Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        outputs: dict[str, np.ndarray] = self._run(
            self._staged.batch(indices, buffers=self._buffers)
        )
        return outputs


def _buffer(
    buffers: dict[str, np.ndarray] | None, name: str, array: np.ndarray, n: int
) -> np.ndarray:
    if buffers is None:
        return np.empty((n, *array.shape[1:]), dtype=array.dtype)
    held = buffers.get(name)
    if held is None or held.shape[0] < n:
        held = buffers[name] = np.empty((n, *array.shape[1:]), dtype=array.dtype)
    return held[:n]


def _layout(pool: SamplePool, name: str) -> str:
    shapes = {s[name].shape for s in pool.samples}
    dtypes = {s[name].dtype for s in pool.samples}
    if len(shapes) != 1 or len(dtypes) != 1:
        return _RAGGED
    shape = next(iter(shapes))
    return _ROWS if len(shape) >= 1 and shape[0] == 1 else _STACKED


def _choose(
    asked: InputPlacement, staging: InputStaging, layouts: Mapping[str, str]
) -> tuple[InputPlacement, str]:
    if asked is InputPlacement.NUMPY:
        return asked, ""
    unbatched = [name for name, layout in layouts.items() if layout != _ROWS]
    if asked in staging.placements and not unbatched:
        return asked, ""
    if unbatched:
        why = f"input(s) {', '.join(unbatched)} have no batch dimension of 1 per sample"
        used = InputPlacement.NUMPY
    else:
        taken = ", ".join(p.value for p in staging.placements)
        why = staging.reason or f"the session takes {taken} inputs only"
        pinned = InputPlacement.PINNED
        used = pinned if pinned in staging.placements else InputPlacement.NUMPY
    return used, f"{asked.value} inputs asked, {used.value} inputs used: {why}"
