"""The CPU path before and after the staged sample pool: zoo:resnet18 on onnxruntime:cpu, batch 8.

Each round runs in its own process on one source tree (A: before, B: after), alternating A/B, and
measures the SUT's own code path two ways: `calibrate`'s threaded throughput (LoadGen stubbed
out) and an Offline LoadGen run; prints each round and the B/A ratio of the medians.

    uv run --all-extras python benchmarks/cpu_staging_ab.py --before /tmp/before/src \\
        --after src --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, tempfile
from pathlib import Path
from crossinfer.backends.base import get_backend
from crossinfer.model import load_model
try:
    from crossinfer.bench.sut import calibrate
    from crossinfer.bench.pool import SamplePool
    from crossinfer.bench.loadgen import run_scenario
    from crossinfer.bench.settings import LoadGenSettings
except ImportError:
    from crossinfer.bench.loadgen import calibrate, SamplePool, run_scenario, LoadGenSettings
batch, seconds = int(sys.argv[1]), float(sys.argv[2])
session = get_backend("onnxruntime").prepare(load_model("zoo:resnet18"), "cpu")
pool = SamplePool.random(session.inputs, count=64, seed=0)
session.run(pool.batch(list(range(batch))))
cal = calibrate(session, pool, batch_size=batch, budget_s=seconds)
settings = LoadGenSettings(scenario="offline", min_duration_ms=int(seconds * 1000),
                           batch_size=batch, target_qps=cal.throughput * 1.2)
with tempfile.TemporaryDirectory() as logs:
    outcome = run_scenario(session, pool, settings, log_dir=Path(logs))
print(json.dumps({"calibrate": cal.throughput, "offline": outcome.throughput}))
"""


INTERLEAVED = r"""
import json, random, sys, time
from crossinfer.backends.base import SessionOptions, get_backend
from crossinfer.bench.pool import SamplePool, StagedPool
from crossinfer.model import load_model
batch, iters, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) or None
options = SessionOptions(threads=threads)
session = get_backend("onnxruntime").prepare(load_model("zoo:resnet18"), "cpu", options)
pool = SamplePool.random(session.inputs, count=64, seed=0)
lane = StagedPool(pool, session).lane(0)
rng = random.Random(0)
out = {"A": [], "B": []}
for i in range(iters):
    indices = rng.sample(range(64), batch)  # LoadGen's Offline issues samples in random order
    order = ("A", "B") if i % 2 == 0 else ("B", "A")
    for label in order:
        t0 = time.perf_counter()
        if label == "A":
            session.run(pool.batch(indices))  # before: concatenated per batch
        else:
            lane.run(indices)  # after: gathered by index into the lane's buffer
        out[label].append(time.perf_counter() - t0)
print(json.dumps(out))
"""


def interleaved(batch: int, iters: int, threads: int) -> None:
    """Both paths in one process, alternating batch by batch: load drift cancels out."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath("src")}
    out = subprocess.run(
        [sys.executable, "-c", INTERLEAVED, str(batch), str(iters), str(threads)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    times = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    pairs = [tb / ta for ta, tb in zip(times["A"], times["B"], strict=True)]
    print(
        f"interleaved, {iters} batches of {batch} each, threads {threads or 'default'}: before {a * 1e3:.1f} ms, after "
        f"{b * 1e3:.1f} ms per batch (median); throughput after/before {a / b:.3f}; "
        f"median of per-pair time ratios after/before {statistics.median(pairs):.3f}"
    )


BUILD_ONLY = r"""
import random, statistics, time
from crossinfer.bench.pool import SamplePool, StagedPool
from crossinfer.model import load_model
class NoSession:  # batch building alone: the part of the path the change touched
    inputs = load_model("zoo:resnet18").inputs
    def run(self, feeds): return {}
pool = SamplePool.random(NoSession.inputs, count=64, seed=0)
staged, buffers, rng = StagedPool(pool, NoSession()), {}, random.Random(0)
for batch, iters in ((8, 200), (256, 20)):
    a, b = [], []
    for i in range(iters):
        idx = [rng.randrange(64) for _ in range(batch)]
        t0 = time.perf_counter(); pool.batch(idx); a.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); staged.batch(idx, buffers=buffers); b.append(time.perf_counter() - t0)
    print(f"building a batch of {batch}: concatenated {statistics.median(a) * 1e3:.2f} ms, "
          f"by index {statistics.median(b) * 1e3:.2f} ms (median)")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="src/ of the tree before the change")
    parser.add_argument("--after", default="src", help="src/ of the tree after the change")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0, help="interleaved: ORT threads")
    parser.add_argument(
        "--interleaved", type=int, default=0, help="also N batches alternating A/B in one process"
    )
    args = parser.parse_args()
    if args.interleaved:
        env = {**os.environ, "PYTHONPATH": os.path.abspath(args.after)}
        subprocess.run([sys.executable, "-c", BUILD_ONLY], env=env, check=True)
        interleaved(args.batch, args.interleaved, args.threads)
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as home:
        for i in range(args.rounds):
            for label, src in (
                (("A", args.before), ("B", args.after))
                if i % 2 == 0
                else (
                    ("B", args.after),
                    ("A", args.before),
                )
            ):
                env = {
                    **os.environ,
                    "PYTHONPATH": os.path.abspath(src),
                    "HOME": os.environ.get("HOME", home),
                }
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(args.batch), str(args.seconds)],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                runs[label].append(figures)
                print(
                    f"round {i} {label}: calibrate {figures['calibrate']:.1f}/s, "
                    f"offline {figures['offline']:.1f}/s",
                    flush=True,
                )
    if not args.rounds:
        return
    load = os.getloadavg()[0]
    summary = {}
    for metric in ("calibrate", "offline"):
        a = statistics.median(r[metric] for r in runs["A"])
        b = statistics.median(r[metric] for r in runs["B"])
        summary[metric] = {"before": a, "after": b, "ratio": b / a}
        print(f"{metric}: before {a:.1f}/s, after {b:.1f}/s, after/before {b / a:.3f}")
    print(json.dumps({"runs": runs, "summary": summary, "load_average_1m": load}))


if __name__ == "__main__":
    main()
