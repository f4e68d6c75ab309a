"""The staged sample pool: batches by index, dtype casts, placements a session declares (a fake
device backend stands in for a GPU), warm-up of every batch shape before LoadGen, and labels."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto
from rich.console import Console

from crossinfer.backends.base import (
    InputPlacement,
    InputStaging,
    SessionOptions,
    StagingSession,
    Target,
    get_backend,
)
from crossinfer.bench.loadgen import run_scenario
from crossinfer.bench.pool import (
    INPUTS_ON_DEVICE,
    SamplePool,
    StagedPool,
    default_placement,
    pad_size,
    run_shapes,
)
from crossinfer.bench.render import render_results
from crossinfer.bench.runner import NOT_COMPLIANT, BenchPlan, bench_session
from crossinfer.bench.settings import LoadGenSettings, quick_settings
from crossinfer.model import TensorSpec, load_model

PINNED, DEVICE, NUMPY = InputPlacement.PINNED, InputPlacement.DEVICE, InputPlacement.NUMPY
X = TensorSpec("x", "float32", ("N", 3, 2), TensorProto.FLOAT)
IDS = TensorSpec("ids", "int64", ("N", 5), TensorProto.INT64)
Y = TensorSpec("y", "float32", ("N", 1), TensorProto.FLOAT)


def _pool(count: int = 10) -> SamplePool:
    return SamplePool.random((X, IDS), count=count, seed=3)


def _expected(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    flat = x.astype(np.float32).reshape(x.shape[0], -1)
    return (flat.sum(axis=1) + ids.sum(axis=1)).reshape(-1, 1).astype(np.float32)


class FakeStaged:
    """What a device backend's staging hook returns: rows 'on the device', lanes that record."""

    def __init__(self, session: FakeDeviceSession, arrays: Mapping[str, np.ndarray]) -> None:
        self.placement = session.staged_as
        self.session = session
        self.rows = {name: array.copy() for name, array in arrays.items()}
        self.dtypes = {name: array.dtype.name for name, array in arrays.items()}
        self.closed = False

    def lane(self) -> FakeLane:
        return FakeLane(self)

    def close(self) -> None:
        self.closed = True


class FakeLane:
    def __init__(self, staged: FakeStaged) -> None:
        self.staged = staged
        with staged.session.lock:
            staged.session.lanes += 1

    def run(
        self, indices: Sequence[int], *, prefetch: Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        session = self.staged.session
        with session.lock:
            session.calls.append((tuple(indices), tuple(prefetch) if prefetch else None))
        rows = self.staged.rows
        return {"y": _expected(rows["x"][list(indices)], rows["ids"][list(indices)])}


class FakeDeviceSession:
    """A session of a 'device' backend that declares numpy, pinned and device placements."""

    target = Target("fakedev", "gpu")
    inputs = (X, IDS)
    outputs = (Y,)

    def __init__(self, *, fixed_shapes: bool = False, fp16: bool = False) -> None:
        self.fixed_shapes = fixed_shapes
        self.host_dtypes = {"x": "float16", "ids": "float16"} if fp16 else {}
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...] | None]] = []
        self.numpy_runs: list[int] = []
        self.lanes = 0
        self.lock = threading.Lock()
        self.staged_as: InputPlacement | None = None
        self.staged_dtypes: dict[str, str] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.numpy_runs.append(feeds["x"].shape[0])
        return {"y": _expected(feeds["x"], feeds["ids"])}

    def placement(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake"}

    def close(self) -> None:
        return None

    def input_staging(self) -> InputStaging:
        return InputStaging(
            (NUMPY, PINNED, DEVICE), self.host_dtypes, fixed_shapes=self.fixed_shapes
        )

    def stage_inputs(
        self, arrays: Mapping[str, np.ndarray], *, placement: InputPlacement
    ) -> FakeStaged:
        self.staged_as = placement
        self.staged_dtypes = {name: a.dtype.name for name, a in arrays.items()}
        return FakeStaged(self, arrays)


class NumpyOnly:
    """A session without the staging capability (as onnxruntime, openvino, ...)."""

    target = Target("plain", "cpu")
    inputs = (X, IDS)
    outputs = (Y,)

    def __init__(self) -> None:
        self.runs: list[int] = []

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs.append(feeds["x"].shape[0])
        return {"y": _expected(feeds["x"], feeds["ids"])}

    def placement(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None


# --- batches by index -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "indices", [[4], [2, 3, 4, 5], [7, 1, 1, 9, 0], [9, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
)
def test_a_batch_by_index_equals_concatenating_the_samples(indices: list[int]) -> None:
    pool = _pool()
    staged = StagedPool(pool, NumpyOnly())
    buffers: dict[str, np.ndarray] = {}
    batch = staged.batch(indices, buffers=buffers)
    expected = pool.batch(indices)
    assert set(batch) == {"x", "ids"}
    for name in batch:
        assert batch[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(batch[name], expected[name])
    consecutive = all(b - a == 1 for a, b in itertools.pairwise(indices))
    staged_arrays = staged._arrays
    assert staged_arrays is not None
    for name in batch:
        # consecutive rows are a view of the staged array; others land in the lane's buffer
        assert np.shares_memory(batch[name], staged_arrays[name]) == consecutive
        assert (name in buffers and np.shares_memory(batch[name], buffers[name])) != consecutive


def test_the_pool_is_staged_once_in_one_contiguous_array_per_input() -> None:
    staged = StagedPool(_pool(), NumpyOnly())
    staged.load()
    arrays = staged._arrays
    assert arrays is not None
    assert arrays["x"].shape == (10, 3, 2) and arrays["x"].flags.c_contiguous
    assert arrays["ids"].shape == (10, 5) and arrays["ids"].dtype == np.int64
    staged.load(list(range(10)))  # LoadGen's LoadSamplesToRam again: nothing is restaged
    assert staged._arrays is arrays


def test_a_pool_without_a_leading_batch_of_one_keeps_concatenation() -> None:
    scalar = TensorSpec("s", "float32", (), TensorProto.FLOAT)
    pool = SamplePool.random((scalar,), count=4)
    staged = StagedPool(pool, NumpyOnly(), placement=DEVICE)
    np.testing.assert_array_equal(staged.batch([2])["s"], pool.batch([2])["s"])
    assert staged.placement is NUMPY
    assert "s have no batch dimension of 1" in staged.reason


# --- dtypes ---------------------------------------------------------------------------------


def test_float_inputs_are_cast_once_to_the_dtype_the_session_computes_in() -> None:
    pool = _pool()
    session = FakeDeviceSession(fp16=True)
    staged = StagedPool(pool, session)
    batch = staged.batch([3, 1])
    assert batch["x"].dtype == np.float16
    np.testing.assert_array_equal(batch["x"], pool.batch([3, 1])["x"].astype(np.float16))
    # integer inputs keep their dtype even when the session lists them
    assert batch["ids"].dtype == np.int64
    info = staged.describe()
    assert info["dtypes"] == {"x": "float16", "ids": "int64"}
    assert info["cast"] == {"x": "float32 -> float16"}
    assert any(
        "part of preprocessing" in note and "x float32 -> float16" in note
        for note in staged.notes()
    )


def test_a_session_that_casts_nothing_keeps_the_pool_dtypes() -> None:
    staged = StagedPool(_pool(), NumpyOnly())
    staged.load()
    assert staged.dtypes == {"x": "float32", "ids": "int64"}
    assert "cast" not in staged.describe()
    assert staged.notes() == []


# --- placements -----------------------------------------------------------------------------


def test_the_default_placement_is_pinned_where_the_session_takes_it() -> None:
    assert default_placement(FakeDeviceSession()) is PINNED
    assert default_placement(NumpyOnly()) is NUMPY
    assert isinstance(FakeDeviceSession(), StagingSession)
    assert not isinstance(NumpyOnly(), StagingSession)


def test_a_pinned_pool_is_staged_by_the_session_in_its_dtype() -> None:
    session = FakeDeviceSession(fp16=True)
    staged = StagedPool(_pool(), session, placement=PINNED)
    staged.load()
    assert session.staged_as is PINNED
    # the hook gets the host arrays already cast: one contiguous array per input, rows = samples
    assert session.staged_dtypes == {"x": "float16", "ids": "int64"}
    outputs = staged.lane().run([1, 2])
    assert session.calls == [((1, 2), None)]
    expected = _pool().batch([1, 2])
    np.testing.assert_allclose(
        outputs["y"], _expected(expected["x"].astype(np.float16), expected["ids"]), rtol=1e-6
    )


def test_device_inputs_asked_of_a_numpy_session_fall_back_with_the_reason() -> None:
    staged = StagedPool(_pool(), NumpyOnly(), placement=DEVICE)
    assert staged.placement is NUMPY
    assert staged.reason.startswith("device inputs asked, numpy inputs used")
    assert staged.describe()["asked"] == "device"
    assert INPUTS_ON_DEVICE not in staged.notes()


def test_each_worker_gets_its_own_lane_warmed_before_loadgen(tmp_path: Path) -> None:
    session = FakeDeviceSession()
    staged = StagedPool(_pool(16), session, placement=PINNED)
    assert staged.lane(0) is staged.lane(0) and staged.lane(1) is not staged.lane(0)
    session.lanes = 0
    fresh = StagedPool(_pool(16), session, placement=PINNED)
    settings = LoadGenSettings(
        scenario="offline", min_duration_ms=200, target_qps=2000, batch_size=4, instances=3
    )
    run_scenario(session, fresh, settings, log_dir=tmp_path)
    assert session.lanes == 3
    # worker 0 warms the shape twice; workers 1 and 2 run it once each to allocate their buffers
    assert [len(i) for i, _ in session.calls[:4]] == [4, 4, 4, 4]
    assert session.calls[0][0] == (0, 2, 4, 6)  # the gather path, not a view, is warmed


def test_offline_on_a_pinned_pool_prefetches_the_next_batch(tmp_path: Path) -> None:
    session = FakeDeviceSession()
    staged = StagedPool(_pool(16), session, placement=PINNED)
    settings = LoadGenSettings(
        scenario="offline", min_duration_ms=200, target_qps=2000, batch_size=4
    )
    outcome = run_scenario(session, staged, settings, log_dir=tmp_path)
    assert outcome.samples_completed > 0
    assert session.numpy_runs == []  # every run went through the staged lanes
    loadgen_calls = session.calls[2:]  # after the warm-up's two runs at batch 4
    assert [len(indices) for indices, _ in session.calls[:2]] == [4, 4]
    assert sum(len(indices) for indices, _ in loadgen_calls) == outcome.samples_completed
    # each run names the batch that follows it on the worker, which then runs next
    for (_, prefetch), (following, _) in itertools.pairwise(loadgen_calls):
        assert prefetch == following
    assert loadgen_calls[-1][1] is None
    assert sum(prefetch is not None for _, prefetch in loadgen_calls) >= len(loadgen_calls) // 2


def test_a_device_pool_launches_the_next_batch_ahead_as_a_pinned_one_does(
    tmp_path: Path,
) -> None:
    session = FakeDeviceSession()
    staged = StagedPool(_pool(16), session, placement=DEVICE)
    settings = LoadGenSettings(
        scenario="offline", min_duration_ms=200, target_qps=2000, batch_size=4
    )
    run_scenario(session, staged, settings, log_dir=tmp_path)
    loadgen_calls = session.calls[2:]
    for (_, prefetch), (following, _) in itertools.pairwise(loadgen_calls):
        assert prefetch == following
    assert sum(prefetch is not None for _, prefetch in loadgen_calls) >= len(loadgen_calls) // 2


# --- fixed shapes and warm-up ---------------------------------------------------------------


def test_pad_sizes_and_the_shapes_a_run_uses() -> None:
    assert [pad_size(n, 8, "server") for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [pad_size(n, 8, "offline") for n in (1, 5, 8)] == [8, 8, 8]
    assert pad_size(1, 1, "singlestream") == 1
    server = LoadGenSettings(scenario="server", batch_size=8)
    assert run_shapes(server, fixed_shapes=True) == (1, 2, 4, 8)
    assert run_shapes(server, fixed_shapes=False) == (1, 8)
    offline = LoadGenSettings(scenario="offline", batch_size=8)
    assert run_shapes(offline, fixed_shapes=True) == (8,)
    multi = LoadGenSettings(scenario="multistream", batch_size=3)  # 8 per query: 3, 3, 2
    assert run_shapes(multi, fixed_shapes=False) == (2, 3)
    assert run_shapes(multi, fixed_shapes=True) == (3,)
    assert run_shapes(LoadGenSettings(scenario="singlestream"), fixed_shapes=True) == (1,)


def test_every_server_shape_is_warmed_up_before_loadgen_starts(tmp_path: Path) -> None:
    session = FakeDeviceSession(fixed_shapes=True)
    staged = StagedPool(_pool(16), session, placement=DEVICE)
    settings = LoadGenSettings(
        scenario="server",
        quick=True,
        min_duration_ms=200,
        min_query_count=64,
        target_qps=400,
        batch_size=4,
        max_queue_delay_ms=2.0,
    )
    outcome = run_scenario(session, staged, settings, log_dir=tmp_path)
    sizes = [len(indices) for indices, _ in session.calls]
    # the warm-up: each shape twice, smallest first, before the first query LoadGen issued
    assert sizes[:6] == [1, 1, 2, 2, 4, 4]
    assert set(outcome.warmup_s) == {1, 2, 4}
    assert all(seconds >= 0 for seconds in outcome.warmup_s.values())
    # every batch the dynamic batcher formed ran at one of the warmed shapes
    assert set(sizes) <= {1, 2, 4}
    assert sum(outcome.batch_sizes) == outcome.samples_completed
    # a second run over the same pool compiles nothing again
    staged.warmup_s[4] = -1.0  # marks the cached figure: a second warm-up would overwrite it
    again = run_scenario(session, staged, settings, log_dir=tmp_path / "again")
    assert again.warmup_s[4] == -1.0


def test_offline_pads_the_short_last_batch_and_drops_its_extra_rows(tmp_path: Path) -> None:
    session = FakeDeviceSession(fixed_shapes=True)
    staged = StagedPool(_pool(10), session, placement=PINNED)
    settings = LoadGenSettings(
        scenario="offline", min_duration_ms=100, target_qps=1000, batch_size=8
    )
    outcome = run_scenario(session, staged, settings, log_dir=tmp_path)
    assert {len(indices) for indices, _ in session.calls} == {8}
    assert sum(outcome.batch_sizes) == outcome.samples_completed
    if outcome.samples_completed % 8:
        assert outcome.batch_sizes[-1] == outcome.samples_completed % 8


# --- the result and its render --------------------------------------------------------------


def _bench(session: Any, tmp_path: Path, *, on_device: bool) -> Any:
    artifact = load_model("zoo:mlp")
    # the fake sessions take the fake spec, not the MLP's: give the artifact their inputs
    artifact = dataclasses.replace(artifact, inputs=session.inputs, outputs=session.outputs)
    plan = BenchPlan(
        scenarios=("offline",),
        batch_sizes=(4,),
        quick=True,
        pool_size=16,
        min_duration_ms=200,
        inputs_on_device=on_device,
    )
    return bench_session(
        session,
        artifact,
        session.target,
        options=SessionOptions(),
        plan=plan,
        batch=4,
        scenarios=("offline",),
        server_latency_ms=10.0,
        log_dir=tmp_path,
    )


def test_inputs_on_device_are_labelled_in_the_result_and_its_render(tmp_path: Path) -> None:
    session = FakeDeviceSession()
    child = _bench(session, tmp_path, on_device=True)
    assert child.errors == ()
    (result,) = child.results
    assert session.staged_as is DEVICE
    assert result.input_placement == "device"
    assert result.notes[:2] == (NOT_COMPLIANT, INPUTS_ON_DEVICE)
    assert result.settings["inputs"] == "device"
    assert result.input_staging["placement"] == "device"
    assert set(result.warmup_s) == {"4"}
    console = Console(record=True, width=140)
    render_results([result], console, title="t")
    text = console.export_text()
    assert "inputs on device: the figures measure the device, not the system" in text
    assert "warm-up before LoadGen" in text and "b4 " in text


def test_a_pinned_run_is_said_so_and_not_labelled_as_on_device(tmp_path: Path) -> None:
    session = FakeDeviceSession(fp16=True)
    (result,) = _bench(session, tmp_path, on_device=False).results
    assert result.input_placement == "pinned"
    assert INPUTS_ON_DEVICE not in result.notes
    assert result.input_staging["cast"] == {"x": "float32 -> float16"}
    console = Console(record=True, width=140)
    render_results([result], console, title="t")
    text = console.export_text()
    assert "inputs on device" not in text
    assert "inputs: pinned host memory" in text
    assert "inputs cast once when staged (preprocessing): x float32 -> float16" in text


def test_a_numpy_backend_keeps_its_settings_and_says_why_not_on_device(tmp_path: Path) -> None:
    session = NumpyOnly()
    (result,) = _bench(session, tmp_path, on_device=True).results
    assert result.input_placement == "numpy"
    assert "inputs" not in result.settings  # unchanged settings: --compare sees no change
    assert result.notes[1].startswith("device inputs asked, numpy inputs used")


def test_a_real_backend_runs_through_the_numpy_lane(tmp_path: Path) -> None:
    session = get_backend("onnxruntime").prepare(load_model("zoo:mlp"), "cpu")
    pool = SamplePool.random(session.inputs, count=16)
    outcome = run_scenario(session, pool, quick_settings("offline", batch_size=4), log_dir=tmp_path)
    assert outcome.samples_completed > 0
    assert set(outcome.warmup_s) == {4}


def test_server_on_a_pinned_pool_takes_no_query_ahead(tmp_path: Path) -> None:
    # a query taken early by a busy worker would wait while an idle one could run it
    session = FakeDeviceSession()
    staged = StagedPool(_pool(16), session, placement=PINNED)
    settings = LoadGenSettings(
        scenario="server",
        quick=True,
        min_duration_ms=200,
        min_query_count=64,
        target_qps=400,
        instances=2,
    )
    outcome = run_scenario(session, staged, settings, log_dir=tmp_path)
    assert outcome.samples_completed >= 64
    assert all(prefetch is None for _, prefetch in session.calls)


def test_multistream_prefetches_the_next_chunk_of_its_query(tmp_path: Path) -> None:
    session = FakeDeviceSession()
    staged = StagedPool(_pool(16), session, placement=PINNED)
    settings = LoadGenSettings(
        scenario="multistream",
        quick=True,
        min_duration_ms=100,
        min_query_count=16,
        expected_latency_ms=1.0,
        batch_size=4,
    )
    run_scenario(session, staged, settings, log_dir=tmp_path)
    loadgen_calls = session.calls[2:]  # after the warm-up's two runs at batch 4
    # 8 samples a query in two batches of 4: the first names the second
    firsts, seconds = loadgen_calls[0::2], loadgen_calls[1::2]
    assert len(firsts) == len(seconds) >= 16
    assert all(prefetch == nxt for (_, prefetch), (nxt, _) in zip(firsts, seconds, strict=False))
    assert all(prefetch is None for _, prefetch in seconds)


def test_a_staged_pool_that_asks_for_it_runs_at_full_load_before_loadgen() -> None:
    session = FakeDeviceSession()
    staged = StagedPool(_pool(16), session, placement=PINNED)
    staged.load()
    staged._staged.steady_warmup_s = 0.05  # type: ignore[union-attr]  # as torch on CUDA asks
    staged.warm_up([4])
    assert staged.steady_warmup is not None
    runs, seconds = staged.steady_warmup
    assert 0 < seconds < 5
    assert runs >= 1 and len(session.calls) == 2 + runs  # the two first runs, then full load
    assert all(len(indices) == 4 for indices, _ in session.calls)
    assert f"warm-up before LoadGen: {runs} batches" in " ".join(staged.notes())
    staged.warm_up([4])  # once per pool
    assert len(session.calls) == 2 + runs
