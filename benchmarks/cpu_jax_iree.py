"""The jax and iree backends on this CPU against ONNX Runtime, in one run: batch-1 latency.

ResNet-50 (zoo:resnet50) and a 4-layer BERT-base encoder at seq 128; FP32 and BF16; for IREE
also without im2col convolutions and without data tiling (crossinfer's defaults turn both on), to
back those defaults.
"Prepare + first" is session creation and the first run: JAX's XLA compile or IREE's
iree-compile (each new input shape compiles once; both caches were cold).

    uv run --all-extras python benchmarks/cpu_jax_iree.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crossinfer import Precision, SessionOptions, get_backend, load_model, random_inputs
from crossinfer.check import compare_outputs, default_tolerance
from crossinfer.errors import CrossinferError

NO_IM2COL = {"--iree-global-opt-use-im2col-for-convs": "false"}
NO_DATA_TILING = {"--iree-opt-data-tiling": "false"}
CONFIGS: list[tuple[str, dict[str, str], Precision]] = [
    ("onnxruntime", {}, Precision.FP32),
    ("jax", {}, Precision.FP32),
    ("jax", {}, Precision.BF16),
    ("iree", {}, Precision.FP32),
    ("iree", NO_IM2COL, Precision.FP32),
    ("iree", NO_DATA_TILING, Precision.FP32),
    ("iree", {}, Precision.BF16),
]


def median_ms(step: Callable[[], Any], n: int) -> float:
    step()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1e3)
    return round(float(np.median(samples)), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="zoo:resnet50,zoo:bert-base?layers=4&seq=128")
    parser.add_argument("--n", type=int, default=10, help="timed runs per configuration")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_jax_iree.json"))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for source in args.models.split(","):
        artifact = load_model(source)
        feeds = random_inputs(artifact.inputs, batch=1, seed=0)
        truth = get_backend("onnxruntime").prepare(artifact, "cpu").run(feeds)
        has_conv = "Conv" in artifact.op_histogram
        for backend, extra, precision in CONFIGS:
            if extra is NO_IM2COL and not has_conv:
                continue  # im2col only touches convolutions
            row: dict[str, Any] = {
                "model": source,
                "backend": backend,
                "precision": precision.value,
                "extra": extra,
            }
            try:
                start = time.perf_counter()
                session = get_backend(backend).prepare(
                    artifact, "cpu", SessionOptions(precision=precision, extra=extra)
                )
                outputs = session.run(feeds)
                row["prepare_and_first_s"] = round(time.perf_counter() - start, 1)
                compared = compare_outputs(outputs, truth, default_tolerance(precision))
                row["p50_ms"] = median_ms(lambda s=session, f=feeds: s.run(f), args.n)
                row["parity"] = all(c.passed for c in compared)
                session.close()
            except CrossinferError as exc:  # one failing configuration must not end the run
                row["error"] = str(exc)[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\n{'model':<32} {'backend':<12} {'prec':<5} {'flags':<10} {'prep+1st s':>10} {'p50 ms':>8}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<32} {r['backend']:<12} {r['precision']:<5} error: {r['error']}")
            continue
        flags = {"": "default", str(NO_IM2COL): "no im2col", str(NO_DATA_TILING): "no tiling"}[
            str(r["extra"]) if r["extra"] else ""
        ]
        print(
            f"{r['model']:<32} {r['backend']:<12} {r['precision']:<5} {flags:<10} "
            f"{r['prepare_and_first_s']:>10} {r['p50_ms']:>8} {'' if r['parity'] else 'PARITY FAIL'}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"host": platform.platform(), "rows": rows}, indent=2) + "\n", encoding="utf-8"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
