"""What the server costs: perf_analyzer through `crossinfer serve` against in-process ONNX Runtime.

For each model and batch size, `crossinfer serve` runs with max_batch_size = that batch (so every
request executes alone, at the same batch size as in-process) and perf_analyzer (binary HTTP and
gRPC) sweeps the concurrency; in-process is Session.run back to back on one thread with the same
session options. Reported: the server's throughput at saturation (its best concurrency) over
in-process throughput, and the p50/p99 latency the server adds at concurrency 1.

    uv run --all-extras python benchmarks/serve_overhead.py [--models resnet50,add16] [--window-ms 3000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import RESULTS, crossinfer_serve, in_process, machine, near_zero_model

from crossinfer import load_model
from crossinfer.errors import PerfAnalyzerError
from crossinfer.serve.perf import PerfRow, locate_perf_analyzer

# model key -> (batch sizes, concurrency range, measurement window scale)
PLANS = {
    "resnet50": ((1, 4), "1:4", 1.0),
    "add16": ((1,), "1:8", 0.5),
}


def sweep(
    model: str, url: str, protocol: str, batch: int, concurrency: str, window_ms: int
) -> list[PerfRow]:
    """One perf_analyzer concurrency sweep; a second, more tolerant try if it cannot stabilise."""
    analyzer = locate_perf_analyzer()
    base = ["-b", str(batch), "--concurrency-range", concurrency]
    base += ["--measurement-interval", str(window_ms), "--max-trials", "8"]
    for stability in ("30", "100"):
        try:
            rows, _ = analyzer.run(model, url, protocol, [*base, "-s", stability], timeout_s=540)
            return rows
        except PerfAnalyzerError as exc:
            print(f"    perf_analyzer -s {stability}: {exc}", file=sys.stderr)
    raise RuntimeError(f"perf_analyzer could not measure {model} over {protocol}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,add16")
    parser.add_argument("--window-ms", type=int, default=3000)
    parser.add_argument("--inprocess-seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_overhead.json")
    parser.add_argument(
        "--rescore", type=Path, help="recompute the table and ratios of a saved result, no runs"
    )
    args = parser.parse_args()
    if args.rescore:
        saved = json.loads(args.rescore.read_text())
        args.out = args.rescore
        report(saved["rows"], args, date=saved["date"], machine_name=saved["machine"])
        return

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="serve-overhead-") as tmp:
        for key in args.models.split(","):
            batches, concurrency, scale = PLANS[key]
            source = (
                str(near_zero_model(Path(tmp) / "add16.onnx")) if key == "add16" else f"zoo:{key}"
            )
            spec = load_model(source).inputs[0]
            dims = [int(d) for d in (spec.shape or ())[1:] if isinstance(d, int)]

            def feeds(
                batch: int, name: str = spec.name, dims: list[int] = dims
            ) -> dict[str, np.ndarray]:
                x = np.random.default_rng(0).standard_normal((batch, *dims))
                return {name: x.astype(np.float32)}

            for batch in batches:
                # in-process before and after the server's sweeps: the machine's load drifts, so
                # both are kept and the server is compared with the faster (see `score`)
                before = in_process(source, feeds, batch, args.inprocess_seconds)
                print(f"{key} batch {batch}: in-process {before.throughput:.1f}/s", file=sys.stderr)
                options = ["--max-batch-size", str(batch), "--max-queue-delay-us", "0"]
                measured: list[tuple[str, list[PerfRow]]] = []
                with crossinfer_serve(source, key, *options) as server:
                    for protocol in ("http", "grpc"):
                        url = server.http if protocol == "http" else server.grpc
                        window = max(1000, int(args.window_ms * scale))
                        levels = sweep(key, url, protocol, batch, concurrency, window)
                        measured.append((protocol, levels))
                        best = max(r.throughput for r in levels)
                        print(f"  {protocol}: {best:.1f}/s", file=sys.stderr, flush=True)
                after = in_process(source, feeds, batch, args.inprocess_seconds)
                print(f"  in-process after: {after.throughput:.1f}/s", file=sys.stderr, flush=True)
                for protocol, levels in measured:
                    best = max(levels, key=lambda r: r.throughput)
                    low = levels[0]
                    rows.append(
                        {
                            "model": key,
                            "source": source if key != "add16" else "Add on 16 floats",
                            "batch": batch,
                            "protocol": protocol,
                            "in_process_before": asdict(before),
                            "in_process_after": asdict(after),
                            "server_levels": [asdict(r) for r in levels],
                            "saturation_concurrency": best.concurrency,
                            "server_throughput": best.throughput,
                            "low_load": asdict(low),
                        }
                    )
    report(rows, args)


def score(row: dict[str, Any]) -> None:
    """Ratio and added latency against the faster in-process run of the two (conservative:
    other work on the machine only ever slows a run, so the faster one is nearer the truth)."""
    local = max(row["in_process_before"], row["in_process_after"], key=lambda r: r["throughput"])
    row["in_process_throughput"] = local["throughput"]
    row["ratio"] = row["server_throughput"] / local["throughput"]
    low = row.get("low_load") or row["server_levels"][0]  # concurrency 1
    row["p50_added_us"] = low["p50_us"] - local["p50_us"]
    row["p99_added_us"] = low["p99_us"] - local["p99_us"]


def report(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    *,
    date: str | None = None,
    machine_name: str | None = None,
) -> None:
    for row in rows:
        score(row)
    table = Table(title="crossinfer serve (perf_analyzer) over in-process ONNX Runtime, same batch")
    for column in (
        "model",
        "batch",
        "protocol",
        "in-process inf/s (before, after)",
        "server inf/s (conc.)",
        "server / in-process",
        "p50 added",
        "p99 added",
    ):
        table.add_column(column)
    for row in rows:
        before, after = row["in_process_before"], row["in_process_after"]
        assert isinstance(before, dict) and isinstance(after, dict)
        table.add_row(
            str(row["model"]),
            str(row["batch"]),
            str(row["protocol"]),
            f"{row['in_process_throughput']:,.1f} ({before['throughput']:,.1f}, {after['throughput']:,.1f})",
            f"{row['server_throughput']:,.1f} ({row['saturation_concurrency']})",
            f"{row['ratio']:.1%}",
            f"{float(row['p50_added_us']) / 1000:.2f} ms",  # type: ignore[arg-type]
            f"{float(row['p99_added_us']) / 1000:.2f} ms",  # type: ignore[arg-type]
        )
    Console(width=160).print(table)
    doc = {
        "benchmark": "serve_overhead",
        "date": date or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_name or machine(),
        "note": "server, perf_analyzer and in-process runs share the machine's cores; other work "
        "was running on it",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
