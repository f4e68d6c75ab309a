"""The dynamic batcher of a base tree against this checkout's, in one process, in turns.

Both batchers run the same ONNX Runtime session (zoo:mlp, batch-1 requests) on one uvloop event
loop: one request at a time, then bursts of 16. Reported: the event loop thread's CPU time per
request (`time.thread_time`, so the ONNX Runtime worker thread and the neighbours' load count far
less than in req/s), median and min-max of the new / base ratio over alternating trials.

    git archive <commit> src | tar -x -C /tmp/base
    uv run --all-extras python benchmarks/serve_batcher_ab.py --base-src /tmp/base/src
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from crossinfer import load_model
from crossinfer.backends.base import get_backend
from crossinfer.serve import batcher as new_batcher
from crossinfer.spec import BatchingSpec


def _base_module(src: Path) -> Any:
    """The base tree's `serve/batcher.py`, imported beside this checkout's (its own imports
    resolve to this checkout, which the batcher's interface to the session has kept)."""
    path = src / "crossinfer" / "serve" / "batcher.py"
    spec = importlib.util.spec_from_file_location("base_batcher", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no batcher at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["base_batcher"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


async def _trial(batcher: Any, feeds: dict[str, np.ndarray], n: int, burst: int) -> float:
    """Loop-thread CPU microseconds per request for `n` requests, `burst` at a time."""
    start = time.thread_time()
    for _ in range(n // burst):
        await asyncio.gather(*(batcher.infer(feeds) for _ in range(burst)))
    return 1e6 * (time.thread_time() - start) / n


async def _main(args: argparse.Namespace) -> None:
    session = get_backend("onnxruntime").prepare(load_model("zoo:mlp"), "cpu")
    feeds = {session.inputs[0].name: np.full((1, 784), 0.5, np.float32)}
    batchers: dict[str, Any] = {}
    for label, module in (("base", _base_module(args.base_src)), ("new", new_batcher)):
        batchers[label] = module.DynamicBatcher([session], BatchingSpec(max_batch_size=8))
        await batchers[label].start()
        for _ in range(200):  # warm-up
            await batchers[label].infer(feeds)
    for burst in (1, 16):
        costs: dict[str, list[float]] = {"base": [], "new": []}
        for trial in range(args.trials):
            for label in ("base", "new") if trial % 2 == 0 else ("new", "base"):
                costs[label].append(await _trial(batchers[label], feeds, args.requests, burst))
        ratios = [n / b for n, b in zip(costs["new"], costs["base"], strict=True)]
        medians = {k: round(statistics.median(v)) for k, v in costs.items()}
        print(
            f"{burst} at a time: loop-thread us/request {medians}, new/base "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        )
    for label, batcher in batchers.items():
        print(label, "executions by batch size", batcher.stats().executions_by_batch_size())
        await batcher.stop()
    session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-src", type=Path, required=True, help="the base tree's src/")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000, help="per trial")
    uvloop.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
