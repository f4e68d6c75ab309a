"""INT8 against FP32 through `crossinfer optimize`: ONNX Runtime (QDQ static) and OpenVINO (NNCF).

Prints a table and writes JSON (default benchmarks/results/optimize_int8.json). Throughput is
measured by the optimize pipeline itself (direct session timing at --batch), FP32 and INT8 in
the same run, so the speed-up is a ratio from one machine state.

    uv run --extra openvino python benchmarks/optimize_int8.py [--models zoo:resnet50,zoo:digits] [--batch 32]
    uv run --extra openvino python benchmarks/optimize_int8.py --isa-cap AVX2 --targets openvino:cpu

Each row names the INT8 recipe the target's ISA chose (7-bit weights without VNNI). `--isa-cap`
sets ONEDNN_MAX_CPU_ISA, so OpenVINO takes an older CPU's INT8 path (its numerics exactly, not
that CPU's speed); ONNX Runtime ignores the cap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crossinfer import Target, discover, load_model
from crossinfer.passes.base import LabelledSet
from crossinfer.passes.calibration import load_calibration
from crossinfer.passes.pipeline import optimize, preset
from crossinfer.zoo import zoo_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="zoo:resnet50,zoo:digits")
    parser.add_argument("--targets", default="onnxruntime:cpu,openvino:cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "optimize_int8.json"
    )
    parser.add_argument(
        "--isa-cap",
        default=None,
        help="ONEDNN_MAX_CPU_ISA for OpenVINO (AVX2: the path of a CPU without VNNI)",
    )
    args = parser.parse_args()
    if args.isa_cap:
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.isa_cap  # the children inherit it

    system = discover()
    machine = (
        f"{system.cpu.model_name}, {system.cpu.logical_cores} logical cores, {platform.platform()}"
        + (f", OpenVINO capped at {args.isa_cap}" if args.isa_cap else "")
    )
    load_before = os.getloadavg()
    rows = []
    for source in args.models.split(","):
        artifact = load_model(source)
        data = zoo_dataset(source) if source.startswith("zoo:") else None
        labelled = LabelledSet(data.inputs, data.labels, data.description) if data else None
        # a zoo model with a data set calibrates on it; the others on labelled-synthetic inputs
        calibration = load_calibration(None if data else "synthetic", artifact)
        for spec in args.targets.split(","):
            target = Target.parse(spec)
            names, runtime = preset(target, "int8")
            with tempfile.TemporaryDirectory() as out:
                report = optimize(
                    artifact,
                    target=target,
                    passes=[(n, None) for n in names],
                    out_dir=Path(out),
                    runtime_precision=runtime,
                    calibration=calibration,
                    dataset=labelled,
                    keep_regressions=True,
                    measure_batch=args.batch,
                    measure_seconds=args.seconds,
                )
            recipe = report.int8_recipe
            for step in report.steps:
                m = step.measurement
                rows.append(
                    {
                        "recipe": (
                            f"{recipe.int8_path.split(':')[0]}: "
                            + ("7-bit" if recipe.reduce_range else "8-bit")
                            + (", per-channel" if recipe.per_channel else "")
                            if recipe and step.pass_name != "baseline"
                            else ""
                        ),
                        "model": source,
                        "target": spec,
                        "step": step.pass_name,
                        "precision": step.precision.value,
                        "throughput": m.throughput if m else None,
                        "batch": m.batch_size if m else None,
                        "latency_ms": m.latency_ms if m else None,
                        "accuracy": m.accuracy if m else None,
                        "speedup": step.speedup,
                        "parity": step.parity_passed,
                        "max_abs_error": max(
                            (c.max_abs_error for c in step.comparisons), default=None
                        ),
                        "min_cosine": min((c.cosine for c in step.comparisons), default=None),
                        "reasons": list(step.reasons),
                        "calibration": calibration.source,
                    }
                )

    table = Table(title=f"optimize int8 ({machine})", title_justify="left")
    for column in (
        "model",
        "target",
        "step",
        "samples/s",
        "batch",
        "lat ms",
        "top-1",
        "speedup",
        "parity",
        "cosine",
        "recipe",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["model"],
            r["target"],
            r["step"],
            "-" if r["throughput"] is None else f"{r['throughput']:.1f}",
            str(r["batch"]),
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}",
            "-" if r["accuracy"] is None else f"{r['accuracy'] * 100:.2f}%",
            "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
            str(r["parity"]),
            "-" if r["min_cosine"] is None else f"{r['min_cosine']:.4f}",
            r["recipe"],
        )
    Console(width=180).print(table)
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"load average before {load_before[0]:.1f}, after {load['after'][0]:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "load": load, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
