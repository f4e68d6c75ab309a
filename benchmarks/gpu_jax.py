"""crossinfer's jax backend (ONNX -> JAX -> XLA) on a GPU: ResNet-50 and BERT-base, in one run.

ResNet-50 (zoo:resnet50) batch-256 throughput and batch-1 latency at FP32, FP16 and BF16 (and
TF32 at batch 256);
BERT-base seq 128 (zoo:bert-base) batch-256 throughput and batch-1 latency at FP16 and BF16.
Each row has the XLA compile time (apart from run time), device-resident figures (inputs already
on the GPU: JaxSession.bind) and end-to-end ones (Session.run: numpy in, numpy out, host
transfers included), parity against ONNX Runtime's CPU FP32 outputs at the row's precision
tolerance (first rows of the batch: samples are independent), and achieved TFLOP/s over the
device's dense peak from crossinfer's hardware catalog (ResNet-50 8.18 GFLOP per image,
BERT-base seq 128 22.4 GFLOP per sequence, /work/shared/REFERENCE.md). Rows run in priority
order and the JSON is rewritten after each, so a run cut short keeps what it measured.

    PYTHONPATH=src python3 benchmarks/gpu_jax.py                       # on the GPU machine
    uv run --all-extras python benchmarks/gpu_jax.py --quick            # CPU smoke run, tiny models
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
from crossinfer.backends.jax import JaxSession, canonical_device, device_name
from crossinfer.check import default_tolerance
from crossinfer.check.parity import compare_outputs
from crossinfer.hardware.catalog import load_catalog

GFLOP = {"resnet50": 8.18, "bert-base": 22.4}
PARITY_ROWS = 16


def timed_throughput(step: Callable[[], Any], batch: int, iters: int) -> dict[str, float]:
    """Samples/s: best and median of three timed loops of ``iters`` steps after warm-up."""
    for _ in range(2):
        step()
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(iters):
            step()
        rates.append(batch * iters / (time.perf_counter() - start))
    return {"best": round(max(rates), 1), "median": round(float(np.median(rates)), 1)}


def timed_latency(step: Callable[[], Any], n: int) -> dict[str, float]:
    for _ in range(5):
        step()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1e3)
    return {
        "p50_ms": round(float(np.percentile(samples, 50)), 3),
        "p99_ms": round(float(np.percentile(samples, 99)), 3),
        "n": n,
    }


class Runner:
    """Collects rows; a failing configuration becomes an error row, never the end of the run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.backend = get_backend("jax")
        self.device = args.device
        name = device_name(*canonical_device(args.device))
        found = [d for d in self.backend.devices() if d.name == name and d.available]
        if not found:
            raise SystemExit(f"jax has no device {args.device} here: {self.backend.devices()}")
        self.device_kind = found[0].description.split(" (XLA")[0]
        entry = load_catalog().device_for(self.device_kind)
        self.peaks = dict(entry.peak_tflops) if entry else {}
        self.truth_cache: dict[str, dict[str, np.ndarray]] = {}

    def row(
        self, family: str, source: str, precision: Precision, batch: int, *, latency: bool
    ) -> None:
        row: dict[str, Any] = {
            "family": family,
            "model": source,
            "precision": precision.value,
            "batch": batch,
            "measure": "latency" if latency else "throughput",
        }
        try:
            self._measure(row, source, precision, batch, latency=latency)
        except Exception as exc:  # one failing configuration must not end the run
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.write()

    def _measure(
        self, row: dict[str, Any], source: str, precision: Precision, batch: int, *, latency: bool
    ) -> None:
        artifact = load_model(source)
        feeds = random_inputs(artifact.inputs, batch=batch, seed=0)
        start = time.perf_counter()
        session = self.backend.prepare(artifact, self.device, SessionOptions(precision=precision))
        assert isinstance(session, JaxSession)
        step = session.bind(feeds)  # compiles for this shape
        row["prepare_s"] = round(time.perf_counter() - start, 2)
        compile_record = session.compiles[-1]
        row["trace_s"] = round(compile_record.trace_s, 2)
        row["compile_s"] = round(compile_record.compile_s, 2)
        row["persistent_cache"] = compile_record.persistent_cache
        if latency:
            row["device_resident"] = timed_latency(step, self.args.latency_n)
            row["end_to_end"] = timed_latency(lambda: session.run(feeds), self.args.latency_n // 2)
        else:
            row["device_resident"] = timed_throughput(step, batch, self.args.iters)
            row["end_to_end"] = timed_throughput(
                lambda: session.run(feeds), batch, max(1, self.args.iters // 2)
            )
            family = row["family"]
            tflops = row["device_resident"]["best"] * GFLOP.get(family, 0.0) / 1e3
            if tflops and not self.args.quick:
                row["tflops"] = round(tflops, 1)
                peak = self.peaks.get(precision.value)
                if peak:
                    row["of_peak"] = round(tflops / peak, 3)
        outputs = session.run(feeds)
        row["parity"] = self._parity(artifact, feeds, outputs, precision)
        session.close()

    def _parity(
        self,
        artifact: Any,
        feeds: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        precision: Precision,
    ) -> dict[str, Any]:
        rows = min(PARITY_ROWS, next(iter(feeds.values())).shape[0])
        head = {k: v[:rows] for k, v in feeds.items()}
        key = f"{artifact.source}:{rows}"
        if key not in self.truth_cache:
            self.truth_cache[key] = get_backend("onnxruntime").prepare(artifact, "cpu").run(head)
        compared = compare_outputs(
            {k: v[:rows] for k, v in outputs.items()},
            self.truth_cache[key],
            default_tolerance(precision),
        )
        worst = max(compared, key=lambda c: c.max_abs_error)
        return {
            "passed": all(c.passed for c in compared),
            "max_abs_error": float(f"{worst.max_abs_error:.3g}"),
            "cosine": float(f"{worst.cosine:.6f}"),
            "against": f"onnxruntime:cpu fp32, first {rows} rows",
        }

    def write(self) -> None:
        out = {
            "device": self.device_kind,
            "target": f"jax:{self.device}",
            "runtime": self.backend.version(),
            "host": platform.platform(),
            "peak_tflops": self.peaks,
            "gflop_per_sample": GFLOP,
            "rows": self.rows,
        }
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps(out, indent=2) + "\n")


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'model':<30} {'prec':<5} {'batch':>5} {'compile s':>9} "
        f"{'device':>18} {'end-to-end':>18} {'TFLOP/s':>8} {'of peak':>7} parity"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<30} {r['precision']:<5} {r['batch']:>5} error: {r['error']}")
            continue
        unit = "ms p50" if r["measure"] == "latency" else "/s"
        key = "p50_ms" if r["measure"] == "latency" else "best"
        dev = f"{r['device_resident'][key]:,.2f} {unit}"
        e2e = f"{r['end_to_end'][key]:,.2f} {unit}"
        parity = "pass" if r["parity"]["passed"] else f"FAIL {r['parity']['max_abs_error']}"
        print(
            f"{r['model']:<30} {r['precision']:<5} {r['batch']:>5} {r['compile_s']:>9.1f} "
            f"{dev:>18} {e2e:>18} {r.get('tflops', '-')!s:>8} {r.get('of_peak', '-')!s:>7} "
            f"{parity}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="gpu", help="jax device: gpu, gpu:N, tpu, cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes (CPU smoke)")
    parser.add_argument("--iters", type=int, default=20, help="steps per timed loop")
    parser.add_argument("--latency-n", type=int, default=200, help="timed batch-1 calls")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_jax.json"))
    args = parser.parse_args()
    if args.quick:
        resnet, bert, big = "zoo:resnet18", "zoo:bert-base?layers=2&seq=32", 4
        args.iters, args.latency_n = 2, 6
        if args.device == "gpu":
            args.device = "cpu"
    else:
        resnet, bert, big = "zoo:resnet50", "zoo:bert-base?seq=128", 256
    runner = Runner(args)
    fp32, fp16, bf16 = Precision.FP32, Precision.FP16, Precision.BF16
    # priority order: a run cut short keeps the rows that matter most
    plan = [
        ("resnet50", resnet, fp16, big, False),
        ("resnet50", resnet, bf16, big, False),
        ("bert-base", bert, fp16, big, False),
        ("bert-base", bert, bf16, big, False),
        ("resnet50", resnet, fp16, 1, True),
        ("bert-base", bert, fp16, 1, True),
        ("resnet50", resnet, fp32, big, False),
        ("resnet50", resnet, bf16, 1, True),
        ("bert-base", bert, bf16, 1, True),
        ("resnet50", resnet, fp32, 1, True),
        ("resnet50", resnet, Precision.TF32, big, False),
    ]
    for family, source, precision, batch, latency in plan:
        runner.row(family, source, precision, batch, latency=latency)
    print_table(runner.rows)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
