"""Dynamic batching on and off: throughput at a p99 latency bound through `crossinfer serve`.

The same model is served twice, with the dynamic batcher (max_batch_size N, no queue delay) and
without (max_batch_size 0: each request runs alone); perf_analyzer (binary HTTP, batch-1
requests) sweeps the concurrency and the best throughput whose p99 stays within the bound is
kept. The server's statistics give the batch sizes it actually executed.

    uv run --all-extras python benchmarks/serve_batching.py [--models mlp,resnet18]
"""

from __future__ import annotations

import argparse
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
from crossinfer.serve.perf import PerfAnalyzerError, PerfRow, locate_perf_analyzer

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
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_batching.json")
    args = parser.parse_args()

    rows: list[dict[str, object]] = []
    for model in args.models.split(","):
        bound_ms, max_batch, concurrency, window = PLANS[model]
        for batching in (True, False):
            options = ["--max-batch-size", str(max_batch if batching else 0)]
            options += ["--max-queue-delay-us", "0"]
            label = f"dynamic batcher (max {max_batch})" if batching else "no batching"
            print(f"{model}: {label} ...", file=sys.stderr, flush=True)
            with crossinfer_serve(f"zoo:{model}", model, *options) as server:
                # without batching dim 0 is an ordinary dynamic dim: perf_analyzer needs a shape
                shapes = [] if batching else batch_one_shapes(f"zoo:{model}")
                levels = sweep(model, server.http, concurrency, window, shapes)
                executed = executions_by_batch_size(server.http, model)
            within = [r for r in levels if r.p99_us <= bound_ms * 1000]
            best = max(within, key=lambda r: r.throughput) if within else None
            rows.append(
                {
                    "model": f"zoo:{model}",
                    "config": label,
                    "max_batch_size": max_batch if batching else 0,
                    "p99_bound_ms": bound_ms,
                    "throughput_within_bound": best.throughput if best else 0.0,
                    "concurrency": best.concurrency if best else None,
                    "p99_ms": best.p99_us / 1000 if best else None,
                    "peak_throughput": max(r.throughput for r in levels),
                    "executions_by_batch_size": executed,
                    "levels": [r.__dict__ for r in levels],
                }
            )
            print(f"  {rows[-1]['throughput_within_bound']:.0f}/s", file=sys.stderr, flush=True)
    report(rows, args)


def report(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    table = Table(
        title="Throughput within a p99 bound, perf_analyzer binary HTTP, batch-1 requests"
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
