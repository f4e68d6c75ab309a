"""The dynamic batcher: exact batch sizes through stats() (held queue, not timing), on a fake and ORT."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import numpy as np
import pytest

from crossinfer.backends.base import Placement, Target, get_backend
from crossinfer.errors import (
    BatcherStoppedError,
    InferenceError,
    InputError,
    QueueFullError,
    QueueTimeoutError,
)
from crossinfer.model import TensorSpec, load_model
from crossinfer.serve import batcher as batcher_module
from crossinfer.serve.batcher import (
    DynamicBatcher,
)
from crossinfer.spec import BatchingSpec

T = TypeVar("T")
LIMIT_S = 10.0  # every test's event loop is bounded by this


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, LIMIT_S))


class FakeSession:
    """y = 2x for every input; records each batch's shapes; fails on a negative value."""

    def __init__(self, hook: Callable[[], None] | None = None) -> None:
        self.target = Target("fake", "cpu")
        self.inputs = (TensorSpec("x", "float32", ("batch", 3), 1),)
        self.outputs = (TensorSpec("y", "float32", ("batch", 3), 1),)
        self.seen: list[dict[str, tuple[int, ...]]] = []
        self.first_values: list[float] = []
        self._hook = hook

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append({k: tuple(v.shape) for k, v in feeds.items()})
        self.first_values.extend(float(v) for v in feeds["x"].reshape(len(feeds["x"]), -1)[:, 0])
        if self._hook is not None:
            self._hook()
        if any((v < 0).any() for v in feeds.values()):
            raise RuntimeError("negative input")
        return {"y": feeds["x"] * 2}

    def placement(self) -> Placement | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake"}

    def close(self) -> None:
        pass

    def batch_sizes(self) -> list[int]:
        return [shapes["x"][0] for shapes in self.seen]


def x(value: float, cols: int = 3, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    return {"x": np.full((1, cols), value, dtype=dtype)}


async def started(batcher: DynamicBatcher) -> DynamicBatcher:
    await batcher.start()
    return batcher


async def wait_pending(batcher: DynamicBatcher, n: int) -> None:
    for _ in range(1000):  # bounded: the tasks enqueue within a few loop iterations
        if batcher.stats().pending >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{n} requests never queued")


async def gather_held(
    batcher: DynamicBatcher, requests: list[Callable[[], Awaitable[dict[str, np.ndarray]]]]
) -> list[dict[str, np.ndarray]]:
    """Queue every request while the batcher is held, then let it form batches."""
    batcher.hold_until(len(requests))
    return list(await asyncio.gather(*(r() for r in requests)))


def test_held_requests_form_full_batches_and_split_back() -> None:
    async def main() -> None:
        session = FakeSession()
        batcher = await started(DynamicBatcher([session], BatchingSpec(max_batch_size=4)))
        outs = await gather_held(batcher, [lambda i=i: batcher.infer(x(i)) for i in range(8)])
        await batcher.stop()
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out["y"], np.full((1, 3), 2 * i, np.float32))
        stats = batcher.stats()
        assert stats.executions_by_batch_size() == {4: 2}
        assert (stats.execution_count, stats.inference_count, stats.success.count) == (2, 8, 8)
        assert stats.queue.count == 8 and stats.pending == 0 and stats.fail.count == 0
        assert session.batch_sizes() == [4, 4]
        assert stats.to_dict()["batch_stats"][0]["compute_infer"]["count"] == 2

    run(main())


def test_preferred_batch_sizes() -> None:
    async def main(preferred: tuple[int, ...], n: int) -> list[int]:
        session = FakeSession()
        config = BatchingSpec(max_batch_size=8, preferred_batch_sizes=preferred)
        batcher = await started(DynamicBatcher([session], config))
        await gather_held(batcher, [lambda: batcher.infer(x(1.0)) for _ in range(n)])
        await batcher.stop()
        return session.batch_sizes()

    assert run(main((4,), 6)) == [4, 2]
    assert run(main((2, 3), 7)) == [3, 3, 1]


def test_multi_row_requests_never_overflow_max_batch_size() -> None:
    async def main() -> list[int]:
        session = FakeSession()
        batcher = await started(DynamicBatcher([session], BatchingSpec(max_batch_size=4)))
        feeds = [np.ones((rows, 3), np.float32) * rows for rows in (3, 2, 2)]
        outs = await gather_held(batcher, [lambda f=f: batcher.infer({"x": f}) for f in feeds])
        for f, out in zip(feeds, outs, strict=True):
            np.testing.assert_array_equal(out["y"], f * 2)
        with pytest.raises(InputError, match="5 rows"):
            await batcher.infer({"x": np.ones((5, 3), np.float32)})
        await batcher.stop()
        return session.batch_sizes()

    assert run(main()) == [3, 4]


def test_mixed_shapes_and_dtypes_never_batch_together() -> None:
    async def main() -> None:
        session = FakeSession()
        batcher = await started(DynamicBatcher([session], BatchingSpec(max_batch_size=8)))
        kinds = [
            (3, np.float32),
            (5, np.float32),
            (3, np.float64),
            (3, np.float32),
            (5, np.float32),
        ]
        outs = await gather_held(
            batcher, [lambda c=c, d=d: batcher.infer(x(1.0, c, d)) for c, d in kinds]
        )
        await batcher.stop()
        for (cols, dtype), out in zip(kinds, outs, strict=True):
            assert out["y"].shape == (1, cols) and out["y"].dtype == dtype
        assert sorted(s["x"] for s in session.seen) == [(1, 3), (2, 3), (2, 5)]
        assert batcher.stats().executions_by_batch_size() == {1: 1, 2: 2}

    run(main())


def test_higher_priority_runs_first() -> None:
    async def main() -> list[float]:
        session = FakeSession()
        config = BatchingSpec(max_batch_size=1, priority_levels=3, default_priority=2)
        batcher = await started(DynamicBatcher([session], config))
        prios = [3, None, 1, 2, 1]  # None: the default (2)
        await gather_held(
            batcher,
            [lambda i=i, p=p: batcher.infer(x(i), priority=p) for i, p in enumerate(prios)],
        )
        with pytest.raises(InputError, match=r"priority must lie in 1\.\.3"):
            await batcher.infer(x(0), priority=4)
        await batcher.stop()
        return session.first_values

    assert run(main()) == [2.0, 4.0, 1.0, 3.0, 0.0]


def test_full_queue_rejects_immediately() -> None:
    async def main() -> None:
        batcher = await started(
            DynamicBatcher([FakeSession()], BatchingSpec(max_batch_size=4, max_queue_size=2))
        )
        batcher.hold_until(100)
        queued = [asyncio.create_task(batcher.infer(x(i))) for i in range(2)]
        await wait_pending(batcher, 2)
        with pytest.raises(QueueFullError, match="Exceeds maximum queue size"):
            await batcher.infer(x(9))
        batcher.release()
        outs = await asyncio.gather(*queued)
        assert [float(o["y"][0, 0]) for o in outs] == [0.0, 2.0]
        await batcher.stop()
        assert batcher.stats().failures == {"REJECTED": 1}

    run(main())


def test_request_times_out_in_the_queue() -> None:
    async def main() -> None:
        config = BatchingSpec(max_batch_size=4, default_timeout_us=10_000_000)
        batcher = await started(DynamicBatcher([FakeSession()], config))
        batcher.hold_until(100)  # never reached: only the timeout can end the first request
        patient = asyncio.create_task(batcher.infer(x(1.0)))
        with pytest.raises(QueueTimeoutError, match="timed out in the queue after 20000 us"):
            await batcher.infer(x(2.0), timeout_us=20_000)
        assert batcher.stats().pending == 1
        batcher.release()
        assert float((await patient)["y"][0, 0]) == 2.0
        await batcher.stop()
        stats = batcher.stats()
        assert stats.failures == {"TIMEOUT": 1} and stats.success.count == 1

    run(main())


def test_failing_batch_fails_only_its_requests() -> None:
    async def main() -> None:
        session = FakeSession()
        batcher = await started(
            DynamicBatcher([session], BatchingSpec(max_batch_size=2), model_name="mlp")
        )
        values = [1.0, -1.0, 3.0, 4.0]  # batch [1, -1] fails, batch [3, 4] succeeds
        batcher.hold_until(4)
        results = await asyncio.gather(
            *(batcher.infer(x(v)) for v in values), return_exceptions=True
        )
        for result in results[:2]:
            assert isinstance(result, InferenceError)
            assert "model 'mlp' failed on a batch of 2 row(s): negative input" in str(result)
        assert [float(r["y"][0, 0]) for r in results[2:]] == [6.0, 8.0]  # type: ignore[index]
        after = await batcher.infer(x(5.0))
        assert float(after["y"][0, 0]) == 10.0
        await batcher.stop()
        stats = batcher.stats()
        assert (stats.success.count, stats.fail.count, stats.failures) == (3, 2, {"BACKEND": 2})

    run(main())


def test_stop_drains_every_accepted_request() -> None:
    async def main() -> None:
        config = BatchingSpec(max_batch_size=2, max_queue_delay_us=60_000_000)
        batcher = await started(DynamicBatcher([FakeSession(), FakeSession()], config))
        batcher.hold_until(100)
        tasks = [asyncio.create_task(batcher.infer(x(i))) for i in range(5)]
        await wait_pending(batcher, 5)
        await batcher.stop(drain=True)  # neither the hold nor the 60 s delay keeps them waiting
        assert [float((await t)["y"][0, 0]) for t in tasks] == [0.0, 2.0, 4.0, 6.0, 8.0]
        assert batcher.stats().success.count == 5
        with pytest.raises(BatcherStoppedError):
            await batcher.infer(x(1.0))

    run(main())


def test_stop_without_drain_fails_queued_requests() -> None:
    async def main() -> None:
        batcher = await started(DynamicBatcher([FakeSession()], BatchingSpec(max_batch_size=2)))
        batcher.hold_until(100)
        tasks = [asyncio.create_task(batcher.infer(x(i))) for i in range(3)]
        await wait_pending(batcher, 3)
        await batcher.stop(drain=False)
        for task in tasks:
            with pytest.raises(BatcherStoppedError, match="stopped before this request ran"):
                await task

    run(main())


def test_queue_delay_fills_a_batch_and_a_full_batch_does_not_wait() -> None:
    async def main(delay_us: int, n: int) -> list[int]:
        session = FakeSession()
        config = BatchingSpec(max_batch_size=4, max_queue_delay_us=delay_us)
        batcher = await started(DynamicBatcher([session], config))
        await asyncio.gather(*(batcher.infer(x(i)) for i in range(n)))
        await batcher.stop()
        return session.batch_sizes()

    assert run(main(200_000, 3)) == [3]  # all three queue within the 200 ms delay
    assert run(main(60_000_000, 4)) == [4]  # a full batch goes at once, not after 60 s


def test_no_batching_passes_tensors_unchanged() -> None:
    async def main() -> None:
        session = FakeSession()
        batcher = await started(DynamicBatcher(lambda: session, BatchingSpec(max_batch_size=0)))
        outs = await gather_held(
            batcher, [lambda: batcher.infer({"x": np.ones((3,), np.float32)}) for _ in range(3)]
        )
        await batcher.stop()
        assert all(o["y"].shape == (3,) for o in outs)
        assert session.seen == [{"x": (3,)}] * 3

    run(main())


def test_event_loop_stays_responsive_while_a_session_computes() -> None:
    unblocked = threading.Event()
    released_by_ticker: list[bool] = []

    def block() -> None:
        # the session waits for the ticker: a blocked event loop could never set this event
        released_by_ticker.append(unblocked.wait(timeout=5.0))

    async def main() -> int:
        batcher = await started(
            DynamicBatcher([FakeSession(hook=block)], BatchingSpec(max_batch_size=4))
        )
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            for _ in range(500):  # bounded
                await asyncio.sleep(0.01)
                ticks += 1
                if ticks == 5:
                    unblocked.set()
                    return

        tick_task = asyncio.create_task(ticker())
        out = await batcher.infer(x(1.0))
        await tick_task
        await batcher.stop()
        assert float(out["y"][0, 0]) == 2.0
        return ticks

    assert run(main()) == 5
    assert released_by_ticker == [True]


@pytest.mark.parametrize(
    ("device", "sleep_s", "limit_ns", "inline"),
    [
        ("cpu", 0.0, 10**10, True),  # fast on the CPU: on the loop after its first run
        ("cpu", 0.02, 1_000_000, False),  # a run beyond the limit stays on the thread
        ("cuda", 0.0, 10**10, False),  # device sessions always keep their thread
    ],
)
def test_a_fast_lone_cpu_batch_runs_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, device: str, sleep_s: float, limit_ns: int, inline: bool
) -> None:
    monkeypatch.setattr(batcher_module, "INLINE_MAX_NS", limit_ns)
    threads: list[int] = []

    def record() -> None:
        threads.append(threading.get_ident())
        if sleep_s:
            threading.Event().wait(sleep_s)

    session = FakeSession(hook=record)
    session.target = Target("fake", device)

    async def main() -> list[float]:
        batcher = await started(DynamicBatcher([session], BatchingSpec(max_batch_size=4)))
        values = [float((await batcher.infer(x(float(i))))["y"][0, 0]) for i in range(3)]
        stats = batcher.stats()
        await batcher.stop()
        assert stats.success.count == 3 and stats.execution_count == 3
        return values

    loop_thread = threading.get_ident()  # asyncio.run's loop runs on this thread
    assert run(main()) == [0.0, 2.0, 4.0]
    assert threads[0] != loop_thread  # the first run of a kind is always measured on the thread
    assert [t == loop_thread for t in threads[1:]] == [inline, inline]


def test_real_onnxruntime_session_batches_and_matches_unbatched_results() -> None:
    session = get_backend("onnxruntime").prepare(load_model("zoo:mlp"), "cpu")
    rng = np.random.default_rng(0)
    feeds = [{"features": rng.standard_normal((1, 784)).astype(np.float32)} for _ in range(8)]
    expected = [session.run(f)["logits"] for f in feeds]

    async def main() -> list[dict[str, np.ndarray]]:
        batcher = await started(
            DynamicBatcher([session], BatchingSpec(max_batch_size=4), model_name="mlp")
        )
        outs = await gather_held(batcher, [lambda f=f: batcher.infer(f) for f in feeds])
        await batcher.stop()
        assert batcher.stats().executions_by_batch_size() == {4: 2}
        return outs

    outs = run(main())
    for out, want in zip(outs, expected, strict=True):
        assert out["logits"].shape == (1, 10)
        np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-5)
    session.close()


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        BatchingSpec(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match=r"default_priority must lie in 1\.\.2"):
        BatchingSpec(max_batch_size=4, priority_levels=2, default_priority=3)
    with pytest.raises(ValueError, match="settle max_batch_size"):
        DynamicBatcher([FakeSession()], BatchingSpec(max_batch_size=None))
