"""Zoo models x backends on this machine through `crossinfer bench`: SingleStream and Offline.

Prints a table and writes JSON (default benchmarks/results/bench_zoo.json). Runs are short
(LoadGen quick settings with a few seconds' minimum), so none is a compliant MLPerf run.

    uv run --extra openvino python benchmarks/bench_zoo.py [--models ...] [--targets ...] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crossinfer import Precision, SessionOptions, Target, discover, load_model
from crossinfer.bench.runner import BenchPlan, run_benchmark

DEFAULT_MODELS = "zoo:mobilenetv2,zoo:resnet50,zoo:bert-base?seq=128&layers=12"
# target[@precision]: OpenVINO's CPU default on AVX512_BF16/AMX machines is bf16
DEFAULT_TARGETS = "onnxruntime:cpu,openvino:cpu,openvino:cpu@bf16"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--targets", default=DEFAULT_TARGETS)
    parser.add_argument("--batch", default="1,8", help="Offline batch sizes")
    parser.add_argument("--seconds", type=float, default=3.0, help="LoadGen min duration per run")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "bench_zoo.json"
    )
    args = parser.parse_args()

    system = discover()
    machine = (
        f"{system.cpu.model_name}, {system.cpu.logical_cores} logical cores, {platform.platform()}"
    )
    plan = BenchPlan(
        scenarios=("singlestream", "offline"),
        batch_sizes=tuple(int(b) for b in args.batch.split(",")),
        quick=True,
        min_duration_ms=int(args.seconds * 1000),
    )
    rows = []
    with tempfile.TemporaryDirectory() as logs:
        for source in args.models.split(","):
            artifact = load_model(source)
            for spec in args.targets.split(","):
                name, _, precision = spec.partition("@")
                options = SessionOptions(precision=Precision(precision or "fp32"))
                run = run_benchmark(
                    artifact, Target.parse(name), plan=plan, options=options, log_root=Path(logs)
                )
                for error in run.errors:
                    rows.append({"model": source, "target": spec, "error": error.reason})
                for r in run.results:
                    rows.append(
                        {
                            "model": source,
                            "target": spec,
                            "scenario": r.scenario,
                            "batch": r.batch_size,
                            "loadgen": r.loadgen_result,
                            "throughput": r.throughput,
                            "p50_ms": r.latency.p50_ms,
                            "p90_ms": r.latency.p90_ms,
                            "p99_ms": r.latency.p99_ms,
                            "spread_pct": r.stability.spread_pct,
                            "peak_rss_mb": r.peak_rss_mb,
                            "load_s": r.load_s,
                            "first_inference_ms": r.first_inference_ms,
                            "runtime_precisions": r.settings.get("runtime", {}).get(
                                "runtime_precisions"
                            ),
                        }
                    )

    table = Table(title=f"bench ({machine})", title_justify="left")
    for column in (
        "model",
        "target",
        "scenario",
        "batch",
        "loadgen",
        "samples/s",
        "p50 ms",
        "p90 ms",
        "RSS MB",
    ):
        table.add_column(column)
    for r in rows:
        if "error" in r:
            table.add_row(r["model"], r["target"], "error", "", r["error"][:60], "", "", "", "")
            continue
        table.add_row(
            r["model"],
            r["target"],
            r["scenario"],
            str(r["batch"]),
            r["loadgen"],
            f"{r['throughput']:.1f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    Console(width=160).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": machine, "plan": vars(args) | {"out": str(args.out)}, "rows": rows},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
