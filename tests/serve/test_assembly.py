"""Batch assembly in the worker: padding to warmed sizes, pinned buffers, outputs cut back."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossinfer.backends.base import InputPlacement, InputStaging, Placement, Target
from crossinfer.model import TensorSpec
from crossinfer.serve.assembly import BatchAssembler, padded_sizes
from crossinfer.serve.batcher import DynamicBatcher
from crossinfer.spec import BatchingSpec


def test_padded_sizes_are_powers_of_two_the_maximum_and_the_preferred_sizes() -> None:
    assert padded_sizes(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert padded_sizes(48, preferred=(24, 99)) == (1, 2, 4, 8, 16, 24, 32, 48)
    assert padded_sizes(1) == (1,)


class FixedShapeSession:
    """y = x + 1, rows tagged; says it compiles per shape and takes pinned buffers (faked)."""

    def __init__(self, *, fixed: bool = True, pinned: bool = True, scalar: bool = True) -> None:
        self.target = Target("fake", "cuda")
        self.inputs = (TensorSpec("x", "float32", ("batch", 2), 1),)
        self.outputs = (
            TensorSpec("y", "float32", ("batch", 2), 1),
            TensorSpec("total", "float32", (), 1),  # not per row: never cut
        )
        self.fixed, self.pinned, self.scalar = fixed, pinned, scalar
        self.shapes: list[int] = []
        self.allocated: list[np.ndarray] = []
        self.fed: list[np.ndarray] = []

    def input_staging(self) -> InputStaging:
        placements = (InputPlacement.NUMPY, InputPlacement.PINNED) if self.pinned else ()
        return InputStaging(placements or (InputPlacement.NUMPY,), fixed_shapes=self.fixed)

    def stage_inputs(self, arrays: Any, *, placement: InputPlacement) -> Any:
        raise NotImplementedError

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        array = np.full(shape, np.nan, dtype=dtype)
        self.allocated.append(array)
        return array

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        self.shapes.append(x.shape[0])
        self.fed.append(x)
        if not self.scalar:
            return {"y": x + 1}
        return {"y": x + 1, "total": np.asarray(x.sum(), np.float32)}

    def placement(self) -> Placement | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake"}

    def close(self) -> None:
        pass


def _rows(start: int, n: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start * 2, (start + n) * 2, dtype=np.float32).reshape(n, 2)}


@pytest.mark.parametrize("threads", [1, 8])
def test_a_fixed_shape_batch_is_padded_pinned_and_cut_back(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    from crossinfer.serve import assembly

    # 8: as on a 16-core GPU host, with every batch above the parallel-join threshold
    monkeypatch.setattr(assembly, "join_threads", lambda: threads)
    monkeypatch.setattr(assembly, "PARALLEL_JOIN_MIN_BYTES", 0)
    monkeypatch.setattr(assembly, "_JOIN_PIECE_BYTES", 1)
    session = FixedShapeSession()
    assembler = BatchAssembler(session, max_batch_size=8)
    assert assembler.sizes == (1, 2, 4, 8) and assembler.pinned
    parts = [_rows(0, 2), _rows(2, 3)]  # 5 rows -> run at 8
    outputs, built_ns = assembler.run(parts)
    assert session.shapes == [8]
    np.testing.assert_array_equal(outputs["y"], np.concatenate([p["x"] for p in parts]) + 1)
    assert outputs["total"].shape == ()  # a scalar output is not cut
    # the batch was written into the session's (pinned) buffer; padding repeats the last row
    assert session.fed[0].base is session.allocated[0] or session.fed[0] is session.allocated[0]
    np.testing.assert_array_equal(session.fed[0][5:], np.repeat(parts[1]["x"][-1:], 3, axis=0))
    assert built_ns >= 0
    # the buffer is reused, not reallocated, for a smaller batch
    assembler.run([_rows(7, 3)])
    assert session.shapes == [8, 4] and len(session.allocated) == 1
    # more rows than the largest size: run as they are (the batcher never sends that many)
    assembler.run([_rows(0, 9)])
    assert session.shapes[-1] == 9


def test_warm_up_runs_every_padded_size_once() -> None:
    session = FixedShapeSession()
    assembler = BatchAssembler(session, max_batch_size=6, preferred=(3,))
    times = assembler.warm_up(_rows(0, 1))
    assert sorted(times) == [1, 2, 3, 4, 6] and session.shapes == [1, 2, 3, 4, 6]


def test_a_session_that_runs_any_shape_gets_its_requests_as_they_are() -> None:
    session = FixedShapeSession(fixed=False, pinned=False)
    assembler = BatchAssembler(session, max_batch_size=8)
    assert assembler.sizes == () and not assembler.pinned
    one = _rows(0, 3)
    assembler.run([one])
    assert session.fed[0] is one["x"]  # one request: no copy at all
    assembler.run([_rows(0, 2), _rows(2, 3)])
    assembler.run([_rows(0, 2), _rows(2, 3)])
    assert session.shapes == [3, 5, 5] and session.allocated == []
    assert session.fed[1] is not session.fed[2]  # unpinned: a fresh batch each time


def test_an_unpinned_fixed_shape_session_gets_fresh_padded_batches() -> None:
    session = FixedShapeSession(pinned=False)
    assembler = BatchAssembler(session, max_batch_size=4)
    outputs, _ = assembler.run([_rows(0, 1), _rows(1, 2)])
    assert session.shapes == [4] and session.allocated == []
    np.testing.assert_array_equal(session.fed[0][3], session.fed[0][2])  # padded with the last row
    np.testing.assert_array_equal(outputs["y"], _rows(0, 3)["x"] + 1)


def test_the_batcher_warms_up_before_it_accepts_and_answers_each_request_its_own_rows() -> None:
    session = FixedShapeSession(scalar=False)  # the batcher splits every output by rows
    config = BatchingSpec(max_batch_size=4, max_queue_delay_us=20_000)

    async def scenario() -> list[dict[str, np.ndarray]]:
        batcher = DynamicBatcher([session], config, model_name="fixed")
        await batcher.start()
        assert session.shapes == [1, 2, 4]  # warm-up: every padded size, before any request
        assert sorted(batcher.warmup_s[0]) == [1, 2, 4]
        batcher.hold_until(3)
        answers = await asyncio.gather(*(batcher.infer(_rows(i * 10, 1)) for i in range(3)))
        await batcher.stop()
        return answers

    answers = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert session.shapes[3:] == [4]  # 3 rows, padded to 4, one batch
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer["y"], _rows(i * 10, 1)["x"] + 1)


@pytest.mark.parametrize("rows", [[1, 2], [3]])
def test_a_real_torch_session_through_the_assembler_matches_run(
    tmp_path: Path, rows: list[int]
) -> None:
    pytest.importorskip("torch")
    from crossinfer.backends.torch import TorchBackend
    from crossinfer.model import load_model

    session = TorchBackend().prepare(load_model(str(_matmul_model(tmp_path))), "cpu")
    assembler = BatchAssembler(session, max_batch_size=4)
    assert not assembler.pinned and assembler.sizes == ()  # eager on the CPU: as they come
    parts = [_rows(10 * i, n) for i, n in enumerate(rows)]
    outputs, _ = assembler.run(parts)
    expected = session.run({"x": np.concatenate([p["x"] for p in parts])})
    np.testing.assert_allclose(outputs["y"], expected["y"])
    pinned = session.pinned_empty((3, 2), np.dtype(np.float32))
    assert pinned.shape == (3, 2) and pinned.dtype == np.float32  # ordinary memory on a CPU


class DeviceJoinSession(FixedShapeSession):
    """Also joins rows itself (`run_parts`), for rows it calls pinned: arrays marked by id."""

    def __init__(self) -> None:
        super().__init__()
        self.pinned_ids: set[int] = set()
        self.joined: list[tuple[int, int]] = []  # (parts, size) per run_parts call

    def host_pinned(self, array: np.ndarray) -> bool:
        return id(array) in self.pinned_ids

    def run_parts(self, parts: list[Mapping[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
        self.joined.append((len(parts), size))
        x = np.concatenate([p["x"] for p in parts])
        x = np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])
        return self.run({"x": x})


def test_rows_all_in_pinned_memory_are_joined_by_the_session_not_on_the_host() -> None:
    session = DeviceJoinSession()
    assembler = BatchAssembler(session, max_batch_size=8)
    parts = [_rows(0, 2), _rows(2, 3)]
    session.pinned_ids = {id(p["x"]) for p in parts}
    outputs, built_ns = assembler.run(parts)
    assert session.joined == [(2, 8)] and built_ns == 0  # padded to 8 by the session
    assert session.allocated == []  # no host batch buffer was made
    np.testing.assert_array_equal(outputs["y"], np.concatenate([p["x"] for p in parts]) + 1)
    # one part in ordinary memory: the host join, as before
    mixed = [parts[0], _rows(5, 1)]
    outputs, _ = assembler.run(mixed)
    assert session.joined == [(2, 8)] and session.shapes[-1] == 4 and len(session.allocated) == 1
    np.testing.assert_array_equal(outputs["y"], np.concatenate([p["x"] for p in mixed]) + 1)


@pytest.mark.parametrize("rows", [[1, 2], [3], [2, 2]])
def test_a_real_torch_session_joins_parts_itself_like_run(tmp_path: Path, rows: list[int]) -> None:
    """torch's `run_parts` (the device join) on the CPU: padded rows, read-only rows from a
    mapped region (as serve's shared memory hands them over) and from bytes."""
    pytest.importorskip("torch")
    import mmap

    from crossinfer.backends.torch import TorchBackend
    from crossinfer.errors import InputError
    from crossinfer.model import load_model

    session = TorchBackend().prepare(load_model(str(_matmul_model(tmp_path))), "cpu")
    region = mmap.mmap(-1, 4096)
    parts = []
    for i, n in enumerate(rows):
        x = _rows(10 * i, n)["x"]
        if i % 2 == 0:  # in a mapped region, marked read-only as serve does
            view = np.frombuffer(memoryview(region)[i * 512 : i * 512 + x.nbytes], np.float32)
            view[:] = x.ravel()
            x = view.reshape(x.shape)
        else:  # a request body's bytes
            x = np.frombuffer(x.tobytes(), np.float32).reshape(x.shape)
        x.flags.writeable = False
        parts.append({"x": x})
    assert not session.host_pinned(parts[0]["x"])  # a CPU session pins nothing
    total = sum(rows)
    outputs = session.run_parts(parts, total + 1)
    joined = np.concatenate([p["x"] for p in parts])
    expected = session.run({"x": np.concatenate([joined, joined[-1:]])})
    np.testing.assert_allclose(outputs["y"], expected["y"])
    assert outputs["y"].shape == (total + 1, 2)
    with pytest.raises(InputError, match="do not fit a batch of 1"):
        session.run_parts(parts + parts, 1)
    with pytest.raises(InputError, match="'x' expects FLOAT32"):
        session.run_parts([{"x": parts[0]["x"].astype(np.int32)}], 4)


def _matmul_model(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_large_joins_copy_in_row_ranges_across_threads_and_match_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crossinfer.serve import assembly

    monkeypatch.setattr(assembly, "PARALLEL_JOIN_MIN_BYTES", 1 << 10)
    monkeypatch.setattr(assembly, "_JOIN_PIECE_BYTES", 3 * 64 * 4)  # 3 rows a piece
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((n, 64), dtype=np.float32) for n in (7, 1, 12, 5)]
    threaded = np.zeros((25, 64), np.float32)
    at, copies = 0, []
    for part in parts:
        copies.append((threaded[at : at + len(part)], part))
        at += len(part)
    assembly.copy_rows(copies, threads=3)
    np.testing.assert_array_equal(threaded, np.concatenate(parts))
    # below the threshold, or with one thread, the same bytes
    single = np.zeros_like(threaded)
    assembly.copy_rows(
        [(single[a : a + len(p)], p) for a, p in zip((0, 7, 8, 20), parts, strict=True)],
        threads=1,
    )
    np.testing.assert_array_equal(single, threaded)


def test_join_threads_leave_small_machines_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossinfer.serve import assembly

    monkeypatch.setattr(assembly.os, "cpu_count", lambda: 2)
    assert assembly.join_threads() == 1
    monkeypatch.setattr(assembly.os, "cpu_count", lambda: 16)
    assert assembly.join_threads() == 8
    monkeypatch.setattr(assembly.os, "cpu_count", lambda: 6)
    assert assembly.join_threads() == 3
