"""LiteRT (XNNPACK) FP32 / INT8 against ONNX Runtime FP32 / INT8 on this CPU: parity, accuracy, speed.

LiteRT runs onnx2tf's conversion (INT8: full-integer PTQ on the zoo data set, or synthetic
calibration data where the model has none); ONNX Runtime runs the ONNX file and crossinfer's
`int8-static` pass on the same calibration data. Throughput from `crossinfer bench`'s runner
(LoadGen Offline, quick settings: not compliant runs).

    uv run --all-extras --group litert-convert python benchmarks/litert_vs_ort.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from crossinfer import Precision, SessionOptions, Target, discover, load_model
from crossinfer.backends.base import get_backend
from crossinfer.bench.runner import BenchPlan, run_benchmark
from crossinfer.model import ModelArtifact
from crossinfer.zoo import zoo_dataset

DEFAULT_MODELS = "zoo:digits,zoo:mobilenetv2,zoo:resnet50"


def _int8_onnx(artifact: ModelArtifact, out: Path, calibration: str | None) -> ModelArtifact:
    """ORT's INT8 model, as `crossinfer optimize --precision int8` makes it."""
    command = ["crossinfer", "optimize", artifact.source, "-t", "onnxruntime:cpu"]
    # keep the INT8 step even when it measures slower: this compares numbers, not speed
    command += ["--precision", "int8", "--out", str(out), "--json", "--keep-regressions"]
    if calibration:
        command += ["--calibration", calibration]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return load_model(json.loads(done.stdout)["final_model"])


def _outputs(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(next(iter(session.run(feeds).values())))


def _first_rows(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """`n` rows of every input (repeated where the feeds have fewer)."""
    out = {}
    for name, value in feeds.items():
        reps = -(-n // value.shape[0])
        out[name] = np.ascontiguousarray(np.concatenate([value] * reps)[:n])
    return out


def _rates_in_turns(
    sessions: dict[str, Any], feeds: dict[str, np.ndarray], rounds: int, seconds: float
) -> dict[str, dict[str, Any]]:
    """Samples/s of `session.run(feeds)` per config, the configs taking turns (forward, then
    backward order, round after round) so that load drift falls on all alike; the ratio to the
    first config (ONNX Runtime FP32) per round, its median and spread, the load average."""
    import os
    import statistics

    n = next(iter(feeds.values())).shape[0]
    names = list(sessions)
    rates: dict[str, list[float]] = {name: [] for name in names}
    loads = []
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            session = sessions[name]
            session.run(feeds)
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                session.run(feeds)
                count += 1
            rates[name].append(n * count / (time.perf_counter() - start))
        loads.append(os.getloadavg()[0])
    base = rates[names[0]]
    out = {}
    for name in names:
        ratios = [a / b for a, b in zip(rates[name], base, strict=True)]
        out[name] = {
            "batch": n,
            "median_per_s": round(statistics.median(rates[name]), 1),
            "per_round_per_s": [round(x, 1) for x in rates[name]],
            "vs_ort_fp32_median": round(statistics.median(ratios), 3),
            "vs_ort_fp32_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "load_average": [round(x, 2) for x in loads],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-loadgen", action="store_true", help="only the rates in turns")
    parser.add_argument("--turns-rounds", type=int, default=4)
    parser.add_argument("--turns-seconds", type=float, default=1.0, help="per config per round")
    parser.add_argument("--turns-batch", type=int, default=8)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "litert_vs_ort.json"
    )
    args = parser.parse_args()
    system = discover()
    machine = (
        f"{system.cpu.model_name}, {system.cpu.logical_cores} logical cores, {platform.platform()}"
    )
    plan = BenchPlan(
        scenarios=("offline",),
        batch_sizes=tuple(int(b) for b in args.batch.split(",")),
        quick=True,
        min_duration_ms=int(args.seconds * 1000),
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for source in args.models.split(","):
            artifact = load_model(source)
            dataset = zoo_dataset(source) if source.startswith("zoo:") else None
            calibration = None if dataset is not None else "synthetic"
            if dataset is not None:
                feeds = {k: np.asarray(v) for k, v in dataset.inputs.items()}
            else:
                rng = np.random.default_rng(0)
                feeds = {
                    s.name: rng.standard_normal((8, *s.shape[1:])).astype(np.float32)  # type: ignore[misc]
                    for s in artifact.inputs
                }
            int8_model = _int8_onnx(artifact, root / source.replace(":", "_"), calibration)
            reference = _outputs(get_backend("onnxruntime").prepare(artifact, "cpu"), feeds)
            configs = [
                ("onnxruntime", artifact, Precision.FP32, "fp32"),
                ("onnxruntime", int8_model, Precision.FP32, "int8 (int8-static QDQ)"),
                ("litert", artifact, Precision.FP32, "fp32"),
                ("litert", artifact, Precision.INT8, "int8 (full-integer PTQ)"),
            ]
            sessions: dict[str, Any] = {}
            for backend, model, precision, label in configs:
                extra = {"calibration": calibration} if calibration else {}
                options = SessionOptions(precision=precision, extra=extra)
                clock = time.perf_counter()
                session = get_backend(backend).prepare(model, "cpu", options)
                prepare_s = time.perf_counter() - clock
                out = _outputs(session, feeds)
                sessions[f"{backend} {label}"] = session
                row: dict[str, Any] = {
                    "model": source,
                    "backend": backend,
                    "precision": label,
                    "prepare_s": prepare_s,
                    "max_abs_error_vs_ort_fp32": float(np.abs(out - reference).max()),
                    "top1_agreement_vs_ort_fp32": float(
                        (out.argmax(axis=1) == reference.argmax(axis=1)).mean()
                    ),
                }
                if dataset is not None:
                    row["top1_accuracy"] = float((out.argmax(axis=1) == dataset.labels).mean())
                if not args.no_loadgen:
                    run = run_benchmark(
                        model, Target(backend, "cpu"), plan=plan, options=options, log_root=root
                    )
                    for result in run.results:
                        row[f"offline_b{result.batch_size}_per_s"] = result.throughput
                    for error in run.errors:
                        row["error"] = error.reason
                rows.append(row)
                print(json.dumps(row))
            batch = _first_rows(feeds, args.turns_batch)
            turns = _rates_in_turns(sessions, batch, args.turns_rounds, args.turns_seconds)
            for row in rows[-len(configs) :]:
                row["in_turns"] = turns[f"{row['backend']} {row['precision']}"]
                print(json.dumps({"model": source, row["backend"]: row["in_turns"]}))
            for session in sessions.values():
                session.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
