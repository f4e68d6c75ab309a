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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0)
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
            for backend, model, precision, label in configs:
                extra = {"calibration": calibration} if calibration else {}
                options = SessionOptions(precision=precision, extra=extra)
                clock = time.perf_counter()
                session = get_backend(backend).prepare(model, "cpu", options)
                prepare_s = time.perf_counter() - clock
                out = _outputs(session, feeds)
                session.close()
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
                run = run_benchmark(
                    model, Target(backend, "cpu"), plan=plan, options=options, log_root=root
                )
                for result in run.results:
                    row[f"offline_b{result.batch_size}_per_s"] = result.throughput
                for error in run.errors:
                    row["error"] = error.reason
                rows.append(row)
                print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
