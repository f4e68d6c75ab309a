"""`crossinfer serve --ray` on one GPU: 1 replica against 2 sharing it (`num_gpus = 0.5`), against
plain `crossinfer serve` of the same model and options, and against `crossinfer bench` Offline.

Every row runs crossinfer's own command line in a child process, as a user would:

  plain  crossinfer serve MODEL OPTIONS                      (one process, HTTP)
  ray1   crossinfer serve MODEL OPTIONS --ray --replicas 1 --scale num_gpus=0.5
  ray2   crossinfer serve MODEL OPTIONS --ray --replicas 2 --scale num_gpus=0.5
  bench  crossinfer bench MODEL OPTIONS --scenario offline    (no server: the ceiling)

`--ray` starts a local Ray instance with its defaults: HAProxy front, direct routing. The client is
ray_scale.py's closed loop: C threads, one keep-alive HTTP connection each, POSTing the same
KServe v2 binary-tensor request of `--request-batch` images (as tritonclient sends it). A GPU
serves one configuration at a time, so the three servers run one after the other (each started,
measured in `--rounds` windows, stopped); the spread of the windows is reported. Everything runs
in a loopback-only network namespace where one can be made (Ray binds every interface).

    PYTHONPATH=src:/tmp/site python3 benchmarks/ray_gpu.py --out $OUT/ray_gpu.json
    uv run --all-extras python benchmarks/ray_gpu.py --smoke     # CPU: zoo:mlp, short windows
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ray_scale import binary_request, closed_loop, load_average
from serve_common import stop_process, wait_http_ok

NETNS_ENV = "CROSSINFER_RAY_GPU_NETNS"


def loopback_up() -> None:
    """Bring `lo` up in this network namespace (SIOCSIFFLAGS; the GPU machine has no `ip`)."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, request)[:18])[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def enter_loopback_namespace() -> str:
    """Re-exec inside a network namespace holding only `lo`; say why not where it cannot."""
    if os.environ.get(NETNS_ENV):
        loopback_up()
        return os.environ[NETNS_ENV]
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return "no loopback-only namespace: needs root and unshare"
    probe = subprocess.run(
        [unshare, "-n", "true"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        return f"no loopback-only namespace: {probe.stderr.strip()[-200:]}"
    os.environ[NETNS_ENV] = "loopback-only network namespace"
    os.execv(unshare, [unshare, "-n", "--", sys.executable, *sys.argv])
    raise AssertionError("unreachable")


def crossinfer(*args: str) -> list[str]:
    return [sys.executable, "-m", "crossinfer.cli", *args]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server (`serve --ray` takes its Ray instance down), then whatever of its
    process group is left (Ray's daemons after a timeout) is killed."""
    stop_process(proc, grace_s=90)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def serve_row(
    command: list[str], port: int, body: tuple[bytes, dict[str, str]], args: argparse.Namespace
) -> dict[str, Any]:
    """Start one server, measure it in windows, stop it: the row."""
    print("$ " + " ".join(shlex.quote(c) for c in command[2:]), flush=True)
    log = Path(f"/tmp/ray-gpu-{port}.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    row: dict[str, Any] = {"command": command[3:], "windows": []}
    try:
        began = time.monotonic()
        wait_http_ok(f"http://127.0.0.1:{port}/v2/health/ready", args.ready_timeout, proc=proc)
        row["ready_s"] = time.monotonic() - began
        closed_loop(f"127.0.0.1:{port}", "m", *body, clients=args.clients, seconds=args.warmup)
        for _ in range(args.rounds):
            run = closed_loop(
                f"127.0.0.1:{port}", "m", *body, clients=args.clients, seconds=args.seconds
            )
            run.pop("stamps")
            run["samples_per_s"] = run["rps"] * args.request_batch
            run["load_average"] = load_average()
            row["windows"].append(run)
            print(
                f"  {run['samples_per_s']:.0f} samples/s, p99 {run['p99_ms']:.0f} ms, "
                f"failed {run['failed']}",
                flush=True,
            )
        rates = [w["samples_per_s"] for w in row["windows"]]
        row["samples_per_s_median"] = statistics.median(rates)
        row["samples_per_s_range"] = [min(rates), max(rates)]
    except Exception as exc:  # a failed row is reported; the others still run
        row["error"] = str(exc)
    finally:
        stop(proc)
        row["log_tail"] = log.read_text(errors="replace")[-1500:]
    return row


def bench_row(model: str, options: list[str], batch: int) -> dict[str, Any]:
    argv = ["bench", model, *options, "--scenario", "offline", "--batch", str(batch)]
    argv += ["--quick", "--no-store", "--json"]
    print("$ crossinfer " + " ".join(argv), flush=True)
    done = subprocess.run(crossinfer(*argv), capture_output=True, text=True, timeout=600)
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"argv": argv, "rc": done.returncode, "error": done.stderr[-2000:]}
    results = data.get("results", [])
    errors = "; ".join(str(e.get("reason")) for e in data.get("errors", []))
    row: dict[str, Any] = {"argv": argv, "rc": done.returncode, "error": errors or None}
    if results:
        row["throughput"] = results[0]["throughput"]
        row["windows"] = results[0]["stability"]["window_throughputs"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:resnet50")
    parser.add_argument(
        "--options",
        default="--backend torch:cuda --precision fp16 -O mode=cudagraphs --max-batch-size 64",
        help="serve/bench options for the model (one string)",
    )
    parser.add_argument(
        "--bench-options",
        default="--backend torch:cuda --precision fp16 -O mode=cudagraphs",
        help="bench's options for the model (one string; serve's batching options are not bench's)",
    )
    parser.add_argument("--request-batch", type=int, default=32, help="images per request")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--num-gpus", default="0.5", help="each replica's share of the GPU")
    parser.add_argument("--bench-batch", type=int, default=256)
    parser.add_argument("--skip", default="", help="comma list of: plain, ray1, ray2, bench")
    parser.add_argument("--smoke", action="store_true", help="CPU: zoo:mlp, short windows")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_gpu.json"))
    args = parser.parse_args()
    if args.smoke:
        args.model, args.options, args.num_gpus = "zoo:mlp", "--threads 1", "0"
        args.bench_options = "--threads 1"
        args.request_batch, args.clients, args.rounds, args.seconds = 4, 2, 1, 2.0
        args.bench_batch = 8
    network = enter_loopback_namespace()
    from crossinfer import load_model

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    artifact = load_model(args.model)
    spec = artifact.inputs[0]
    dims = [args.request_batch] + [d if isinstance(d, int) else 1 for d in spec.shape[1:]]
    x = np.random.default_rng(0).standard_normal(dims, np.float32)
    body = binary_request(spec.name, x)
    options = shlex.split(args.options)
    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "network": network,
        "model": args.model,
        "options": options,
        "request_batch": args.request_batch,
        "request_bytes": len(body[0]),
        "clients": args.clients,
        "load_average_start": load_average(),
        "rows": {},
    }
    with contextlib.suppress(Exception):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        doc["gpu"] = gpu.stdout.strip()
    doc["cpus"] = os.cpu_count()
    skip = set(args.skip.split(","))
    port = 18600
    base = ["serve", args.model, "--name", "m", *options, "--host", "127.0.0.1"]
    base += ["--log-level", "warning"]
    plain = crossinfer(*base, "--http-port", str(port), "--grpc-port", "-1", "--metrics-port", "-1")
    scale = ["--scale", f"num_gpus={args.num_gpus}"]
    cases = {
        "plain": plain,
        "ray1": crossinfer(*base, "--http-port", str(port + 1), "--replicas", "1", *scale, "--ray"),
        "ray2": crossinfer(*base, "--http-port", str(port + 2), "--replicas", "2", *scale, "--ray"),
    }
    for offset, (key, command) in enumerate(cases.items()):
        if key not in skip:
            doc["rows"][key] = serve_row(command, port + offset, body, args)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1, default=str))
    if "bench" not in skip:
        doc["rows"]["bench"] = bench_row(
            args.model, shlex.split(args.bench_options), args.bench_batch
        )
    rows = doc["rows"]
    rate = {k: r.get("samples_per_s_median") for k, r in rows.items() if k != "bench"}
    figures: dict[str, Any] = {}
    if rate.get("ray1") and rate.get("ray2"):
        figures["two_over_one_replica"] = rate["ray2"] / rate["ray1"]
    if rate.get("ray1") and rate.get("plain"):
        figures["ray1_over_plain"] = rate["ray1"] / rate["plain"]
    bench = rows.get("bench", {}).get("throughput")
    if bench:
        figures.update({f"{k}_over_bench": v / bench for k, v in rate.items() if v})
    doc["figures"] = figures
    doc["load_average_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    print(json.dumps({"figures": figures, "rates": rate, "bench": bench}, indent=1))


if __name__ == "__main__":
    main()
