"""Full-size zoo models through `check`: load time, one warm run, and parity per backend x device.

Prints a table and writes JSON (default benchmarks/results/check_zoo.json). One warm run is a
sanity figure, not a benchmark: `crossinfer bench` measures speed properly.

    uv run --extra openvino python benchmarks/check_zoo.py [--models zoo:resnet50,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crossinfer import check_model, discover, load_model, random_inputs

DEFAULT_MODELS = "zoo:mobilenetv2,zoo:resnet50,zoo:bert-base?seq=128&layers=12"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "check_zoo.json"
    )
    args = parser.parse_args()

    system = discover()
    machine = (
        f"{system.cpu.model_name}, {system.cpu.logical_cores} logical cores, {platform.platform()}"
    )
    rows = []
    for source in args.models.split(","):
        start = time.perf_counter()
        artifact = load_model(source)
        load_model_s = time.perf_counter() - start
        report = check_model(artifact, feeds=random_inputs(artifact.inputs, batch=1, seed=0))
        for row in report.rows:
            worst = row.worst()
            rows.append(
                {
                    "model": source,
                    "parameters": artifact.parameter_count,
                    "validate_s": round(load_model_s, 2),
                    "target": row.target,
                    "verdict": row.verdict.value,
                    "load_s": row.load_s,
                    "warm_run_ms": None if row.run_s is None else row.run_s * 1e3,
                    "max_abs_error": None
                    if worst is None or row.is_reference
                    else worst.max_abs_error,
                    "nodes": (row.placement or {}).get("nodes"),
                    "precisions": row.session.get("runtime_precisions"),
                }
            )

    table = Table(title=f"check, batch 1 ({machine})", title_justify="left")
    for column in ("model", "target", "verdict", "load s", "warm run ms", "max abs err", "nodes"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["model"],
            r["target"],
            r["verdict"],
            "-" if r["load_s"] is None else f"{r['load_s']:.2f}",
            "-" if r["warm_run_ms"] is None else f"{r['warm_run_ms']:.1f}",
            "-" if r["max_abs_error"] is None else f"{r['max_abs_error']:.1e}",
            str(r["nodes"] or "-"),
        )
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
