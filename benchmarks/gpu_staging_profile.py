"""Where a batch's time goes on crossinfer's pinned-input path (torch:cuda), phase by phase.

Gather into pinned memory (torch.index_select), host-to-device copy, compute (run_tensors), the
whole lane with and without prefetch, and the device-resident lane: the figures that explain
`bench`'s host-input throughput against the device-resident one. The pinned lane's two
strategies (`gather`: host gather then one copy; `rows`: one copy per run of rows) are timed in
alternating rounds, on the main thread and in a worker thread (as bench's SUT runs them), and
each row reports the median and spread of its rounds. Prints a table, writes JSON.

    PYTHONPATH=src:/tmp/site python3 benchmarks/gpu_staging_profile.py --out $OUT/staging.json
"""

# ruff: noqa: B023  # each closure is timed within the loop iteration that made it
from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import numpy as np
import torch
from gpu_common import timed_ms as _timed  # a sibling script

from crossinfer import Precision, SessionOptions, get_backend, load_model
from crossinfer.backends.base import InputPlacement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--mode", default="compile")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/staging.json"))
    args = parser.parse_args()

    artifact = load_model(args.model)
    session = get_backend("torch").prepare(
        artifact,
        "cuda",
        SessionOptions(precision=Precision.FP16, extra={"mode": args.mode}),
    )
    rng = np.random.default_rng(0)
    arrays = {
        spec.name: rng.standard_normal(
            (args.pool, *[d for d in spec.shape[1:]]),  # type: ignore[misc, index]
        ).astype(np.float16)
        for spec in session.inputs
    }
    batches = [rng.integers(0, args.pool, args.batch).tolist() for _ in range(args.iters + 2)]
    rows: dict[str, float] = {}
    spreads: dict[str, list[float]] = {}
    for placement in (InputPlacement.PINNED, InputPlacement.DEVICE):
        staged = session.stage_inputs(arrays, placement=placement)
        strategies = ("gather", "rows") if placement is InputPlacement.PINNED else ("auto",)
        lanes = {strategy: staged.lane(strategy=strategy) for strategy in strategies}
        for lane in lanes.values():
            lane.run(batches[0])  # compile / warm
            lane.run(batches[1])
        it = iter(range(10**9))
        for _ in range(args.rounds):  # A/B/A/B: the strategies alternate within each round
            for strategy, lane in lanes.items():
                tag = f"{placement.value}/{strategy}"

                def plain() -> object:
                    return lane.run(batches[next(it) % len(batches)])

                def ahead() -> object:
                    i = next(it) % len(batches)
                    return lane.run(batches[i], prefetch=batches[(i + 1) % len(batches)])

                spreads.setdefault(f"{tag}: lane, no prefetch", []).append(
                    _timed(plain, args.iters)
                )
                spreads.setdefault(f"{tag}: lane, prefetch", []).append(_timed(ahead, args.iters))
                # as bench's SUT runs it: in a worker thread, not the main one
                box: dict[str, float] = {}
                worker = threading.Thread(target=lambda: box.update(ms=_timed(ahead, args.iters)))
                worker.start()
                worker.join()
                spreads.setdefault(f"{tag}: lane, prefetch, worker thread", []).append(box["ms"])
        if placement is InputPlacement.PINNED:
            pool = staged.pool[session.inputs[0].name]  # type: ignore[attr-defined]
            index = torch.as_tensor(batches[0], dtype=torch.long)
            host = torch.empty((args.batch, *pool.shape[1:]), dtype=pool.dtype, pin_memory=True)
            rows["gather into pinned (index_select)"] = _timed(
                lambda: torch.index_select(pool, 0, index, out=host), args.iters
            )
            box = {}
            worker = threading.Thread(
                target=lambda: box.update(
                    ms=_timed(lambda: torch.index_select(pool, 0, index, out=host), args.iters)
                )
            )
            worker.start()
            worker.join()
            rows["gather into pinned (index_select), worker thread"] = box["ms"]
            device = torch.empty_like(host, device="cuda")
            rows["host-to-device copy (pinned)"] = _timed(
                lambda: device.copy_(host, non_blocking=True), args.iters
            )

            def row_copies() -> None:
                for at, row in enumerate(batches[0]):
                    device[at].copy_(pool[row], non_blocking=True)

            rows["host-to-device copy, one call per row"] = _timed(row_copies, args.iters)
            feeds = {session.inputs[0].name: device}
            rows["compute (run_tensors)"] = _timed(
                lambda: session.run_tensors(feeds),
                args.iters,  # type: ignore[attr-defined]
            )
            rows["torch threads"] = float(torch.get_num_threads())
        staged.close()
    for name, values in spreads.items():
        rows[name] = float(np.median(values))
        rows[name + " (spread %)"] = float((max(values) - min(values)) / min(values) * 100)
    for name, value in rows.items():
        per_s = args.batch / value * 1e3 if "threads" not in name and "%" not in name else 0
        print(f"{name:40s} {value:9.2f} {'ms' if per_s else ''} {per_s:10.0f}/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"model": args.model, "batch": args.batch, "rows": rows, "rounds": spreads}, indent=1
        )
    )


if __name__ == "__main__":
    main()
