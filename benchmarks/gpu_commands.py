"""crossinfer's own commands on a GPU against hand-written PyTorch baselines, in one call.

Baselines (in this process): torchvision ResNet-50 / Hugging Face BERT-base (seq 128), FP16,
channels-last for the CNN, `torch.compile` (default mode), batch 256, with the input already on
the GPU and with FP32 numpy input copied to the GPU every batch (pageable memory, the naive
program), and the compiled model's batch-1 latency. crossinfer rows run the CLI in child
processes (`crossinfer bench`, `tune`), exactly as a user would, and read their --json output.
The pinned and pageable host-to-device copy bandwidth is measured beside them.

    PYTHONPATH=src:/tmp/site python3 benchmarks/gpu_commands.py --out $OUT/gpu_commands.json
    uv run --all-extras python benchmarks/gpu_commands.py --smoke      # CPU: tiny models, no GPU rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROUNDS = 3
RESNET, BERT = "zoo:resnet50", "zoo:bert-base?seq=128"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _throughput(step: Callable[[], object], batch: int, iters: int) -> list[float]:
    """Samples/s of `iters` calls, ROUNDS times (the spread is reported)."""
    rates = []
    for _ in range(ROUNDS):
        _sync()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        _sync()
        rates.append(batch * iters / (time.perf_counter() - start))
    return rates


def _latency_ms(step: Callable[[], object], count: int) -> dict[str, float]:
    samples = []
    for _ in range(count):
        _sync()
        start = time.perf_counter()
        step()
        _sync()
        samples.append((time.perf_counter() - start) * 1e3)
    values = np.asarray(samples)
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def _baseline_module(name: str, device: torch.device) -> tuple[torch.nn.Module, bool]:
    if name == RESNET:
        import torchvision

        module = torchvision.models.resnet50(weights=None).eval().half().to(device)
        return module.to(memory_format=torch.channels_last), True
    from transformers import BertConfig, BertModel

    config = BertConfig(attn_implementation="sdpa")
    return BertModel(config).eval().half().to(device), False


def _host_batch(name: str, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == RESNET:
        return {"x": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}
    ids = rng.integers(0, 30522, size=(batch, 128), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def baseline(name: str, batch: int, iters: int) -> dict[str, Any]:
    """The hand-written program: compile FP16, device-resident and naive host input."""
    device = torch.device("cuda")
    module, image = _baseline_module(name, device)
    compiled = torch.compile(module)
    host = _host_batch(name, batch)

    def to_device(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in arrays.items():
            tensor = torch.from_numpy(value).to(device)
            if tensor.is_floating_point():
                tensor = tensor.half()
            if image:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            out[key] = tensor
        return out

    def call(feeds: dict[str, torch.Tensor]) -> object:
        return compiled(feeds["x"]) if image else compiled(**feeds)

    resident = to_device(host)
    row: dict[str, Any] = {"model": name, "batch": batch}
    with torch.inference_mode():
        start = time.perf_counter()
        call(resident)
        _sync()
        row["first_call_s"] = time.perf_counter() - start
        for _ in range(3):
            call(resident)
        row["device_resident"] = _throughput(lambda: call(resident), batch, iters)
        row["host_fp32_numpy"] = _throughput(lambda: call(to_device(host)), batch, iters)

        def to_host(result: object) -> list[np.ndarray]:
            # as crossinfer answers: every output on the host, in its declared FP32
            tensors = [result] if isinstance(result, torch.Tensor) else list(result.values())  # type: ignore[attr-defined]
            return [t.float().cpu().numpy() for t in tensors if isinstance(t, torch.Tensor)]

        row["host_fp32_numpy_outputs_to_host"] = _throughput(
            lambda: to_host(call(to_device(host))), batch, iters
        )
        one = {k: v[:1] for k, v in resident.items()}
        call(one)
        call(one)
        row["batch1"] = _latency_ms(lambda: call(one), 300)
    return row


def copy_bandwidth(name: str, batch: int) -> dict[str, float]:
    """Host-to-device GB/s of one batch, from pageable and from pinned memory, FP32 and FP16."""
    host = next(iter(_host_batch(name, batch).values()))
    device = torch.device("cuda")
    out = {}
    for dtype in (np.float32, np.float16) if host.dtype.kind == "f" else (host.dtype,):
        array = np.ascontiguousarray(host.astype(dtype))
        for pinned in (False, True):
            source = torch.from_numpy(array)
            if pinned:
                source = source.pin_memory()
            target = torch.empty(source.shape, dtype=source.dtype, device=device)
            for _ in range(2):
                target.copy_(source, non_blocking=pinned)
            _sync()
            start = time.perf_counter()
            for _ in range(10):
                target.copy_(source, non_blocking=pinned)
            _sync()
            seconds = (time.perf_counter() - start) / 10
            key = f"{np.dtype(dtype).name}_{'pinned' if pinned else 'pageable'}_GBps"
            out[key] = array.nbytes / seconds / 1e9
    return out


def cli(args: list[str], timeout: float) -> dict[str, Any]:
    """Run `crossinfer ARGS --json` in a child process, as a user would; its JSON and its time."""
    command = [sys.executable, "-m", "crossinfer.cli", *args, "--json"]
    print("$ crossinfer " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"args": args, "error": f"timeout after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"args": args, "wall_s": wall, "rc": done.returncode, "error": done.stderr[-3000:]}
    return {"args": args, "wall_s": wall, "rc": done.returncode, "data": data}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SERVE_CASES = (
    "http_binary_b1_c128,grpc_b1_c128,http_binary_b32_c8,grpc_b32_c8,"
    "http_shm_system_b32_c8,grpc_shm_system_b32_c8,grpc_shm_cuda_b32_c8"
)


def _serve_case(key: str) -> tuple[str, list[str]]:
    """`grpc_shm_system_b32_c16` -> ("grpc", perf_analyzer arguments): protocol, shared memory,
    request batch and concurrency, all named in the key."""
    parts = key.split("_")
    extra = []
    if "shm" in parts:
        extra += ["--shared-memory", parts[parts.index("shm") + 1]]
    for part in parts:
        if part[0] in "bc" and part[1:].isdigit():
            flag = "-b" if part[0] == "b" else "--concurrency-range"
            extra += [flag, part[1:]]
    return parts[0], extra


def _model_stats(http: int) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/m/stats", timeout=10) as r:
        stats: dict[str, Any] = json.loads(r.read())["model_stats"][0]
        return stats


def _batch_stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Batches run between two statistics reads: count per size and mean ms per phase."""

    def table(stats: dict[str, Any]) -> dict[int, dict[str, Any]]:
        return {b["batch_size"]: b for b in stats.get("batch_stats", [])}

    old, new = table(before), table(after)
    out: dict[str, Any] = {}
    for size, entry in sorted(new.items()):
        prior = old.get(size, {})
        count = entry["compute_infer"]["count"] - prior.get("compute_infer", {}).get("count", 0)
        if count <= 0:
            continue
        row: dict[str, Any] = {"count": count}
        for phase in ("compute_input", "compute_infer", "compute_output"):
            ns = entry[phase]["ns"] - prior.get(phase, {}).get("ns", 0)
            row[f"{phase}_ms"] = round(ns / count / 1e6, 3)
        out[str(size)] = row
    return out


def serve_perf(
    name: str, options: list[str], perf_binary: str | None, cases: list[str], window_ms: int = 3000
) -> dict[str, Any]:
    """`crossinfer serve` on the GPU (127.0.0.1 only) measured by perf_analyzer, case by case
    (`_serve_case`); bounded windows and trials. Each row carries perf_analyzer's split of the
    latency and the server's batches (sizes, and per phase ms) run during the case."""
    import urllib.request

    from crossinfer.serve.perf import locate_perf_analyzer

    http, grpc = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "crossinfer.cli", "serve", name, "--name", "m"]
    cmd += ["--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc)]
    cmd += ["--metrics-port", "-1", "--log-level", "warning", *options]
    print("$ " + " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
    log = open("/tmp/serve-gpu.log", "w")  # noqa: SIM115  # closed below, with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    out: dict[str, Any] = {"command": cmd[3:], "rows": {}}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("serve exited") from None
                time.sleep(1)
        out["ready_s"] = 300 - (deadline - time.monotonic())
        perf = locate_perf_analyzer(perf_binary)
        shape = ["--shape=x:3,224,224"] if name.startswith("zoo:resnet") else []
        window = ["--measurement-interval", str(window_ms), "--max-trials", "4"]
        window += ["--stability-percentage", "30", *shape]
        for key in cases:
            protocol, extra = _serve_case(key)
            url = f"127.0.0.1:{http if protocol == 'http' else grpc}"
            try:
                before = _model_stats(http)
                rows, _ = perf.run("m", url, protocol, [*extra, *window], timeout_s=120)
                row = rows[-1]
                out["rows"][key] = {
                    "throughput": row.throughput,
                    "p50_ms": row.p50_us / 1e3 if row.p50_us else None,
                    "p99_ms": row.p99_us / 1e3 if row.p99_us else None,
                    "server_queue_ms": row.server_queue_us / 1e3,
                    "server_compute_ms": row.server_compute_us / 1e3,
                    "client_send_ms": row.client_send_us / 1e3,
                    "network_server_ms": row.network_server_us / 1e3,
                    "batches": _batch_stats_delta(before, _model_stats(http)),
                }
            except Exception as exc:  # a failed case is a row, the others still run
                out["rows"][key] = {"error": str(exc)[-1500:]}
            print(key, out["rows"][key], flush=True)
    except Exception as exc:
        out["error"] = str(exc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        out["log_tail"] = Path("/tmp/serve-gpu.log").read_text()[-2000:]
    return out


def _bench_row(run: dict[str, Any]) -> dict[str, Any]:
    if "data" not in run:
        return {"args": run["args"], "error": run.get("error")}
    results = run["data"].get("results", [])
    errors = run["data"].get("errors", [])
    row: dict[str, Any] = {"args": run["args"], "wall_s": run.get("wall_s")}
    if errors:
        row["error"] = "; ".join(str(e.get("reason")) for e in errors)
    if results:
        r = results[0]
        row.update(
            throughput=r["throughput"],
            p50_ms=r["latency"]["p50_ms"],
            p99_ms=r["latency"]["p99_ms"],
            windows=r["stability"]["window_throughputs"],
            load_s=r["load_s"],
            notes=r["notes"],
            settings=r["settings"],
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=f"{RESNET},{BERT}")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of: baseline, bench, check, serve, tune; or bench rows: host, "
        "on_device, singlestream",
    )
    parser.add_argument("--bench-extra", default="", help="extra bench arguments (one string)")
    parser.add_argument("--offline-mode", default="compile", help="torch mode of the Offline runs")
    parser.add_argument(
        "--host-instances", default="1", help="comma list: an Offline host row per --instances"
    )
    parser.add_argument("--singlestream-mode", default="cudagraphs", help="torch mode, batch 1")
    parser.add_argument("--tune-timeout", type=float, default=600)
    parser.add_argument("--perf-analyzer", default=None, help="the perf_analyzer binary")
    parser.add_argument(
        "--serve-options",
        default="--backend torch:cuda --precision fp16 -O mode=cudagraphs --max-batch-size 256 "
        "--max-queue-delay-us 2000 --instances 2",
    )
    parser.add_argument(
        "--serve-cases", default=SERVE_CASES, help="comma list: PROTOCOL[_shm_KIND]_bN_cM"
    )
    parser.add_argument(
        "--serve-window-ms", type=int, default=3000, help="perf_analyzer's measurement interval"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_commands.json"))
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    report: dict[str, Any] = {
        "machine": f"{gpu}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "torch": torch.__version__,
        "rows": [],
    }
    models = [m for m in args.models.split(",") if m]
    extra = shlex.split(args.bench_extra)
    for name in models:
        entry: dict[str, Any] = {"model": name}
        if "baseline" not in skip and torch.cuda.is_available():
            entry["baseline"] = baseline(name, args.batch, args.iters)
            entry["copy_bandwidth"] = copy_bandwidth(name, args.batch)
            print(json.dumps(entry["baseline"], default=float), flush=True)
        if "check" not in skip:
            entry["check"] = cli(
                [
                    *("check", name, "-t", "torch:cuda", "--precision", "fp16"),
                    *("--batch", "8", "--reference", "onnxruntime:cpu"),
                ],
                timeout=600,
            )
        if "bench" not in skip:
            common = ["bench", name, "-b", "torch:cuda", "--precision", "fp16", "--quick"]
            common += ["--no-store", *extra]
            runs = {
                f"offline_{args.offline_mode}_host" + (f"_i{n}" if n != "1" else ""): [
                    *common,
                    *("--scenario", "offline", "--batch", str(args.batch)),
                    *("-O", f"mode={args.offline_mode}", "--instances", n),
                ]
                for n in args.host_instances.split(",")
            }
            runs |= {
                f"offline_{args.offline_mode}_on_device": [
                    *common,
                    *("--scenario", "offline", "--batch", str(args.batch)),
                    *("-O", f"mode={args.offline_mode}", "--inputs-on-device"),
                ],
                f"singlestream_{args.singlestream_mode}": [
                    *common,
                    *("--scenario", "singlestream", "-O", f"mode={args.singlestream_mode}"),
                ],
            }
            # a row kind in --skip (host, on_device, singlestream) leaves those rows out
            runs = {k: v for k, v in runs.items() if not any(s in k for s in skip)}
            entry["bench"] = {}
            for key, argv in runs.items():
                entry["bench"][key] = _bench_row(cli(argv, timeout=600))
                print(key, json.dumps(entry["bench"][key], default=str)[:600], flush=True)
        report["rows"].append(entry)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
    if "serve" not in skip:
        report["serve"] = serve_perf(
            models[0],
            shlex.split(args.serve_options),
            args.perf_analyzer,
            [c for c in args.serve_cases.split(",") if c],
            args.serve_window_ms,
        )
        args.out.write_text(json.dumps(report, indent=2, default=str))
    if "tune" not in skip:
        out_dir = args.out.parent / "gpu-tune"
        run = cli(
            [
                "tune",
                RESNET,
                *("--target", "torch:cuda", "--precisions", "fp16"),
                *("--batch", "1,64,256", "--strategy", "quick", "-o", str(out_dir)),
            ],
            timeout=args.tune_timeout,
        )
        report["tune"] = {k: v for k, v in run.items() if k != "data"} | {
            "summary": _tune_summary(run.get("data"))
        }
        print("tune", json.dumps(report["tune"], default=str)[:2000], flush=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")


def _tune_summary(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if not data:
        return None
    rec = data.get("recommendation", {})
    return {
        "pick": rec.get("pick"),
        "measured": data.get("measured"),
        "space_size": data.get("space_size"),
        "timings_s": data.get("timings_s"),
        "notes": rec.get("notes"),
        "candidates": [
            {k: r.get(k) for k in ("key", "status", "metrics", "reasons")}
            for r in rec.get("candidates", [])
            if r.get("metrics")
        ],
    }


if __name__ == "__main__":
    main()
