"""crossinfer's torch backend on a GPU against a hand-written PyTorch baseline, in one run.

ResNet-50 (zoo:resnet50) batch-256 throughput: eager FP32, eager FP16 channels-last (with and
without crossinfer's Conv+ReLU fusion), torch.compile FP16 channels-last (compile time apart),
CUDA graphs; torchvision's ResNet-50 FP16 channels-last, eager and torch.compile, as the
baseline. Batch-1 latency p50/p99, eager against CUDA graphs. BERT-base seq 128 (zoo:bert-base)
batch-256 throughput and batch-1 latency, FP16 and BF16. Every crossinfer row is checked against
ONNX Runtime's CPU FP32 outputs at its precision's tolerance. Achieved TFLOP/s over the device's
dense peak (/work/shared/REFERENCE.md: H100/H200 SXM FP16/BF16 989 TF, TF32 495, FP32 67;
ResNet-50 4.09 GMAC = 8.18 GFLOP per image, BERT-base seq 128 11.2 GMAC = 22.4 GFLOP per sequence).
Prints tables and writes JSON (default benchmarks/results/gpu_torch.json).

    PYTHONPATH=src python3 benchmarks/gpu_torch.py                     # on the GPU machine
    uv run --all-extras python benchmarks/gpu_torch.py --quick          # CPU smoke run, tiny models
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossinfer import Precision, SessionOptions, get_backend, load_model, random_inputs
from crossinfer.backends.torch import TorchSession
from crossinfer.check import default_tolerance
from crossinfer.check.parity import compare_outputs

# per-precision dense peaks, TFLOP/s, for the devices REFERENCE.md lists
PEAKS_TF = {"fp32": 67.0, "tf32": 495.0, "fp16": 989.0, "bf16": 989.0}
GFLOP = {"resnet50": 8.18, "bert-base": 22.4}


def device_peaks(name: str) -> dict[str, float] | None:
    return PEAKS_TF if ("H100" in name or "H200" in name) else None


def timed_throughput(
    step: Callable[[], Any], device: torch.device, batch: int, iters: int, repeats: int = 3
) -> dict[str, float]:
    """Samples/s: best and median of `repeats` timed loops of `iters` steps after warm-up."""
    for _ in range(3):
        step()
    sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync(device)
        rates.append(batch * iters / (time.perf_counter() - start))
    return {"best": max(rates), "median": float(np.median(rates))}


def timed_latency(step: Callable[[], Any], device: torch.device, n: int) -> dict[str, float]:
    for _ in range(10):
        step()
    sync(device)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return {
        "p50_ms": float(np.percentile(samples, 50)),
        "p99_ms": float(np.percentile(samples, 99)),
        "mean_ms": float(np.mean(samples)),
        "n": n,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """Collects rows; a failing configuration becomes an error row, never the end of the run."""

    def __init__(self, device_name: str, device: torch.device, args: argparse.Namespace) -> None:
        self.device_name = device_name
        self.device = device
        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.peaks = device_peaks(
            torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        )

    def add(self, row: dict[str, Any]) -> None:
        family = row.get("family")
        per_s = (row.get("throughput") or {}).get("best")
        prec = row.get("precision")
        if per_s and family in GFLOP:
            tflops = per_s * GFLOP[family] / 1e3
            row["tflops"] = round(tflops, 1)
            if self.peaks and prec in self.peaks:
                row["of_peak"] = round(tflops / self.peaks[prec], 3)
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def session_row(
        self,
        *,
        family: str,
        label: str,
        artifact: Any,
        feeds: dict[str, np.ndarray],
        truth: dict[str, np.ndarray],
        precision: Precision,
        extra: dict[str, str],
        batch: int,
        latency: bool = False,
        parity_rows: int | None = None,
    ) -> None:
        row: dict[str, Any] = {
            "family": family,
            "config": label,
            "who": "crossinfer",
            "precision": precision.value,
            "settings": extra,
            "batch": batch,
        }
        try:
            start = time.perf_counter()
            session = get_backend("torch").prepare(
                artifact,
                self.device_name,
                SessionOptions(precision=precision, extra=extra),
            )
            assert isinstance(session, TorchSession)
            row["prepare_s"] = round(time.perf_counter() - start, 2)
            prepared = session.prepare_inputs(feeds)
            first = time.perf_counter()
            session.run_tensors(prepared)
            sync(self.device)
            row["first_call_s"] = round(time.perf_counter() - first, 2)
            outputs = session.run(feeds)
            rows = parity_rows or batch
            comparisons = compare_outputs(
                {k: v[:rows] for k, v in outputs.items()},
                {k: v[:rows] for k, v in truth.items()},
                default_tolerance(precision),
            )
            row["parity"] = all(c.passed for c in comparisons)
            row["max_abs_error"] = float(max(c.max_abs_error for c in comparisons))
            if latency:
                row["latency_device"] = timed_latency(
                    lambda: session.run_tensors(prepared), self.device, self.args.latency_n
                )
                row["latency_numpy"] = timed_latency(
                    lambda: session.run(feeds), self.device, self.args.latency_n
                )
            else:
                row["throughput"] = timed_throughput(
                    lambda: session.run_tensors(prepared), self.device, batch, self.args.iters
                )
                if self.args.numpy_path:
                    row["throughput_numpy"] = timed_throughput(
                        lambda: session.run(feeds),
                        self.device,
                        batch,
                        max(2, self.args.iters // 4),
                        1,
                    )
            info = session.describe()
            row["compile_s"] = info["compile_s"]
            row["describe"] = {
                k: info.get(k)
                for k in (
                    "precision",
                    "mode",
                    "channels_last",
                    "folded_batchnorms",
                    "fused_conv_relu",
                )
            }
            session.close()
        except Exception as exc:  # a benchmark row, not the run, fails
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.add(row)


def onnxruntime_truth(artifact: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return get_backend("onnxruntime").prepare(artifact, "cpu").run(feeds)


def resnet_section(run: Runner, args: argparse.Namespace) -> None:
    source = "zoo:resnet18" if args.quick else "zoo:resnet50"
    artifact = load_model(source)
    batch = args.resnet_batch
    feeds = random_inputs(artifact.inputs, batch=batch, seed=0)
    truth_rows = min(batch, args.parity_rows)
    truth = onnxruntime_truth(artifact, {k: v[:truth_rows] for k, v in feeds.items()})
    one = {k: v[:1] for k, v in feeds.items()}
    truth_one = {k: v[:1] for k, v in truth.items()}
    fp16, fp32 = Precision.FP16, Precision.FP32
    cuda = run.device.type == "cuda"
    configs: list[tuple[str, Precision, dict[str, str]]] = [
        ("eager fp32", fp32, {"channels_last": "0", "fuse_conv_relu": "0"}),
        ("eager fp16 channels-last", fp16, {"channels_last": "1", "fuse_conv_relu": "0"}),
        (
            "eager fp16 channels-last + conv-relu fusion",
            fp16,
            {"channels_last": "1", "fuse_conv_relu": "1"},
        ),
        (
            f"compile {args.compile_mode} fp16 channels-last",
            fp16,
            {"mode": "compile", "compile_mode": args.compile_mode, "channels_last": "1"},
        ),
    ]
    if cuda:
        configs.append(
            (
                "cudagraphs fp16 channels-last + fusion",
                fp16,
                {"mode": "cudagraphs", "channels_last": "1"},
            )
        )
    for label, precision, extra in configs:
        if "compile" in label and args.no_compile:
            continue
        run.session_row(
            family="resnet50",
            label=label,
            artifact=artifact,
            feeds=feeds,
            truth=truth,
            precision=precision,
            extra=extra,
            batch=batch,
            parity_rows=truth_rows,
        )
    latency_configs = [
        ("b1 eager fp16", fp16, {"channels_last": "1"}),
    ]
    if cuda:
        latency_configs += [
            ("b1 cudagraphs fp16", fp16, {"mode": "cudagraphs", "channels_last": "1"}),
            (
                "b1 cudagraphs fp16, no conv-relu fusion",
                fp16,
                {"mode": "cudagraphs", "channels_last": "1", "fuse_conv_relu": "0"},
            ),
        ]
    for label, precision, extra in latency_configs:
        run.session_row(
            family="resnet50-b1",
            label=label,
            artifact=artifact,
            feeds=one,
            truth=truth_one,
            precision=precision,
            extra=extra,
            batch=1,
            latency=True,
        )
    baseline(run, args, batch)


def baseline(run: Runner, args: argparse.Namespace, batch: int) -> None:
    """Hand-written: torchvision's ResNet-50, FP16, channels-last, eager and torch.compile."""
    import torchvision

    build = torchvision.models.resnet18 if args.quick else torchvision.models.resnet50
    model = build(weights=None).eval().to(run.device).half().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=run.device).half()
    x = x.contiguous(memory_format=torch.channels_last)
    variants: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [("eager", model)]
    if not args.no_compile:
        variants.append(
            (f"compile {args.compile_mode}", torch.compile(model, mode=args.compile_mode))
        )
    for label, fn in variants:
        row: dict[str, Any] = {
            "family": "resnet50",
            "config": f"torchvision {label} fp16 channels-last",
            "who": "baseline",
            "precision": "fp16",
            "batch": batch,
        }
        try:
            with torch.inference_mode():
                start = time.perf_counter()
                fn(x)
                sync(run.device)
                row["first_call_s"] = round(time.perf_counter() - start, 2)
                row["throughput"] = timed_throughput(
                    lambda fn=fn: fn(x), run.device, batch, args.iters
                )
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        run.add(row)
    del model
    if run.device.type == "cuda":
        torch.cuda.empty_cache()


def bert_section(run: Runner, args: argparse.Namespace) -> None:
    source = "zoo:bert-base?layers=2&seq=32" if args.quick else "zoo:bert-base"
    artifact = load_model(source)
    batch = args.bert_batch
    feeds = random_inputs(artifact.inputs, batch=batch, seed=0)
    truth_rows = min(batch, args.parity_rows)
    truth = onnxruntime_truth(artifact, {k: v[:truth_rows] for k, v in feeds.items()})
    one = {k: v[:1] for k, v in feeds.items()}
    truth_one = {k: v[:1] for k, v in truth.items()}
    cuda = run.device.type == "cuda"
    for precision in (Precision.FP16, Precision.BF16):
        name = precision.value
        variants = [] if args.bert_latency_only else [(f"eager {name}", {})]
        if precision is Precision.BF16 and variants:  # autocast is BF16's default; converted too
            variants.append((f"eager {name} converted weights", {"autocast": "0"}))
        for label, extra in variants:
            run.session_row(
                family="bert-base",
                label=label,
                artifact=artifact,
                feeds=feeds,
                truth=truth,
                precision=precision,
                extra=extra,
                batch=batch,
                parity_rows=truth_rows,
            )
        if args.bert_compile and not args.no_compile and not args.bert_latency_only:
            run.session_row(
                family="bert-base",
                label=f"compile {args.compile_mode} {name}",
                artifact=artifact,
                feeds=feeds,
                truth=truth,
                precision=precision,
                extra={"mode": "compile", "compile_mode": args.compile_mode},
                batch=batch,
                parity_rows=truth_rows,
            )
        for mode in ("eager", "cudagraphs") if cuda else ("eager",):
            run.session_row(
                family="bert-base-b1",
                label=f"b1 {mode} {name}",
                artifact=artifact,
                feeds=one,
                truth=truth_one,
                precision=precision,
                extra={"mode": mode},
                batch=1,
                latency=True,
            )


def check_section(args: argparse.Namespace) -> dict[str, Any]:
    """`crossinfer check zoo:bert-base` as a user runs it: its table, and the JSON for the rows."""
    source = "zoo:bert-base?layers=2&seq=32" if args.quick else "zoo:bert-base"
    command = [
        sys.executable,
        "-m",
        "crossinfer.cli",
        "check",
        source,
        "--timeout",
        str(args.check_timeout),
    ]
    env = dict(os.environ, COLUMNS="160")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    print(done.stdout, flush=True)
    print(done.stderr[-3000:], flush=True)
    return {
        "command": "crossinfer check " + source,
        "exit_code": done.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "stdout": done.stdout,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | config | who | prec | batch | img-or-seq/s | TFLOP/s | of peak | p50 ms | p99 ms | first call s | parity (max abs err) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        thr = (r.get("throughput") or {}).get("best")
        lat = r.get("latency_device") or {}
        parity = (
            ""
            if "parity" not in r
            else f"{'pass' if r['parity'] else 'FAIL'} ({r['max_abs_error']:.1e})"
        )
        if "error" in r:
            parity = "error: " + r["error"][:80]
        p50 = f"{lat['p50_ms']:.2f}" if lat else ""
        p99 = f"{lat['p99_ms']:.2f}" if lat else ""
        rate = "" if thr is None else f"{thr:,.0f}"
        lines.append(
            f"| {r['family']} | {r['config']} | {r['who']} | {r['precision']} | {r['batch']} | "
            f"{rate} | {r.get('tflops', '')} | {r.get('of_peak', '')} | {p50} | {p99} | "
            f"{r.get('first_call_s', '')} | {parity} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny models and sizes (a CPU smoke run)"
    )
    parser.add_argument("--device", default=None, help="torch device; default cuda if present")
    parser.add_argument("--resnet-batch", type=int, default=None)
    parser.add_argument("--bert-batch", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--latency-n", type=int, default=None)
    parser.add_argument("--parity-rows", type=int, default=32)
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--bert-compile", action="store_true")
    parser.add_argument("--bert-latency-only", action="store_true", help="only BERT's batch-1 rows")
    parser.add_argument(
        "--numpy-path", action="store_true", help="also time run() with host copies"
    )
    parser.add_argument(
        "--skip", default="", help="comma list of sections to skip: resnet,bert,check"
    )
    parser.add_argument("--check-timeout", type=int, default=300)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "gpu_torch.json"
    )
    args = parser.parse_args()
    args.resnet_batch = args.resnet_batch or (2 if args.quick else 256)
    args.bert_batch = args.bert_batch or (2 if args.quick else 256)
    args.iters = args.iters or (2 if args.quick else 20)
    args.latency_n = args.latency_n or (5 if args.quick else 300)
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from crossinfer.backends.torch import resolve_device

    device = resolve_device(device_name)
    run = Runner(device_name, device, args)
    machine = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "argv": sys.argv[1:],
    }
    print(json.dumps(machine), flush=True)
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    if "resnet" not in skip:
        resnet_section(run, args)
    if "bert" not in skip:
        bert_section(run, args)
    check = None if "check" in skip else check_section(args)
    result = {
        "machine": machine,
        "rows": run.rows,
        "check": check,
        "seconds": time.perf_counter() - started,
    }
    print(table(run.rows))
    mine = [
        r
        for r in run.rows
        if r["family"] == "resnet50" and r["who"] == "crossinfer" and r.get("parity")
    ]
    theirs = [
        r
        for r in run.rows
        if r["family"] == "resnet50" and r["who"] == "baseline" and "throughput" in r
    ]
    if mine and theirs:
        pick = max(mine, key=lambda r: r["throughput"]["best"])
        best = max(theirs, key=lambda r: r["throughput"]["best"])
        ratio = pick["throughput"]["best"] / best["throughput"]["best"]
        result["pick"] = {"crossinfer": pick["config"], "baseline": best["config"], "ratio": ratio}
        print(
            f"crossinfer's pick: {pick['config']} = {ratio:.3f}x the baseline's best ({best['config']})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out} after {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
