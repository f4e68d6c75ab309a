"""Dynamic batching on and off: throughput at a p99 latency bound through `crossinfer serve`.

The same model is served twice at once, with the dynamic batcher (max_batch_size N, no queue
delay) and without (max_batch_size 0: each request runs alone); perf_analyzer (binary HTTP,
batch-1 requests) sweeps the concurrency of each in turn, for a few rounds, and the best
throughput whose p99 stays within the bound is kept (mean over rounds). The server's statistics
give the batch sizes it actually executed.

    uv run --all-extras python benchmarks/serve_batching.py [--models mlp,resnet18]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import RESULTS, crossinfer_serve, machine

from crossinfer import load_model
from crossinfer.errors import PerfAnalyzerError
from crossinfer.serve.perf import PerfRow, locate_perf_analyzer

# model -> (p99 bound in ms, max_batch_size when batching, concurrency range, window ms)
PLANS = {
    "mlp": (10.0, 16, "1:16:3", 2000),
    "resnet18": (100.0, 8, "1:10:3", 3000),
}


def sweep(
    model: str, url: str, concurrency: str, window_ms: int, shapes: list[str]
) -> list[PerfRow]:
    analyzer = locate_perf_analyzer()
    args = ["--concurrency-range", concurrency, "--measurement-interval", str(window_ms)]
    args += [flag for shape in shapes for flag in ("--shape", shape)]
    args += ["--max-trials", "8"]
    for stability in ("30", "100"):
        try:
            rows, _ = analyzer.run(model, url, "http", [*args, "-s", stability], timeout_s=540)
            return rows
        except PerfAnalyzerError as exc:
            print(f"    perf_analyzer -s {stability}: {exc}", file=sys.stderr)
    raise RuntimeError(f"perf_analyzer could not measure {model}")


def best_within(levels: list[PerfRow], bound_ms: float) -> PerfRow | None:
    """The highest-throughput concurrency level whose p99 stays within the bound."""
    within = [r for r in levels if r.p99_us <= bound_ms * 1000]
    return max(within, key=lambda r: r.throughput) if within else None


def batch_one_shapes(source: str) -> list[str]:
    """perf_analyzer's ``--shape NAME:1,d1,...`` for every input, the batch dim set to 1."""
    shapes = []
    for spec in load_model(source).inputs:
        dims = [1, *(d if isinstance(d, int) else 1 for d in (spec.shape or ())[1:])]
        shapes.append(f"{spec.name}:{','.join(str(d) for d in dims)}")
    return shapes


def executions_by_batch_size(http: str, model: str) -> dict[int, int]:
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=10) as resp:
        stats = json.load(resp)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,resnet18")
    parser.add_argument("--rounds", type=int, default=2, help="sweeps per config, alternating")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_batching.json")
    args = parser.parse_args()

    rows: list[dict[str, object]] = []
    for model in args.models.split(","):
        bound_ms, max_batch, concurrency, window = PLANS[model]
        configs = {True: f"dynamic batcher (max {max_batch})", False: "no batching"}
        rounds: dict[bool, list[list[PerfRow]]] = {True: [], False: []}
        with contextlib.ExitStack() as stack:
            # both servers up at once and swept in turn, so the machine's load drift hits both
            servers = {}
            for batching in configs:
                options = ["--max-batch-size", str(max_batch if batching else 0)]
                options += ["--max-queue-delay-us", "0"]
                servers[batching] = stack.enter_context(
                    crossinfer_serve(f"zoo:{model}", model, *options)
                )
            for round_ in range(args.rounds):
                for batching, label in configs.items():
                    # without batching dim 0 is an ordinary dynamic dim: perf_analyzer needs a shape
                    shapes = [] if batching else batch_one_shapes(f"zoo:{model}")
                    levels = sweep(model, servers[batching].http, concurrency, window, shapes)
                    rounds[batching].append(levels)
                    best = best_within(levels, bound_ms)
                    got = f"{best.throughput:.0f}/s" if best else "none within bound"
                    print(f"{model} round {round_ + 1} {label}: {got}", file=sys.stderr, flush=True)
            executed = {b: executions_by_batch_size(servers[b].http, model) for b in configs}
        for batching, label in configs.items():
            bests = [best_within(levels, bound_ms) for levels in rounds[batching]]
            kept = [b for b in bests if b is not None]
            last = kept[-1] if kept else None
            rows.append(
                {
                    "model": f"zoo:{model}",
                    "config": label,
                    "max_batch_size": max_batch if batching else 0,
                    "p99_bound_ms": bound_ms,
                    # the mean over rounds (a round with nothing within the bound counts 0)
                    "throughput_within_bound": sum(b.throughput if b else 0.0 for b in bests)
                    / len(bests),
                    "rounds_within_bound": [b.throughput if b else 0.0 for b in bests],
                    "concurrency": last.concurrency if last else None,
                    "p99_ms": last.p99_us / 1000 if last else None,
                    "peak_throughput": max(r.throughput for lv in rounds[batching] for r in lv),
                    "executions_by_batch_size": executed[batching],
                    "levels": [[r.__dict__ for r in lv] for lv in rounds[batching]],
                }
            )
    report(rows, args)


def report(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    table = Table(
        title="Throughput within a p99 bound, perf_analyzer binary HTTP, batch-1 requests, "
        f"mean of {args.rounds} alternating sweeps"
    )
    for column in (
        "model",
        "config",
        "p99 bound",
        "inf/s within bound (conc., p99)",
        "peak inf/s",
        "gain",
        "batch sizes run",
    ):
        table.add_column(column)
    for row in rows:
        off = next(r for r in rows if r["model"] == row["model"] and r["max_batch_size"] == 0)
        gain = float(row["throughput_within_bound"]) / float(off["throughput_within_bound"] or 1)  # type: ignore[arg-type]
        row["gain_over_no_batching"] = gain
        executed = row["executions_by_batch_size"]
        assert isinstance(executed, dict)
        top = sorted(executed.items(), key=lambda kv: -kv[1])[:4]
        table.add_row(
            str(row["model"]),
            str(row["config"]),
            f"{row['p99_bound_ms']:g} ms",
            f"{row['throughput_within_bound']:,.0f} ({row['concurrency']}, {row['p99_ms']:.1f} ms)"
            if row["concurrency"]
            else "none within bound",
            f"{row['peak_throughput']:,.0f}",
            "-" if row["max_batch_size"] == 0 else f"{gain:.2f}x",
            ", ".join(f"{b}: {n}" for b, n in top),
        )
    Console(width=160).print(table)
    doc = {
        "benchmark": "serve_batching",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": "server and perf_analyzer share the machine's cores; other work was running on it",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
