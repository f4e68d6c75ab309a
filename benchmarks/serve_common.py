"""Shared pieces of the serve benchmarks: the near-zero model, a `crossinfer serve` child process,
in-process timing, wrk, and the machine's description. Not a benchmark itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper

from crossinfer import discover, load_model
from crossinfer.backends.base import get_backend

RESULTS = Path(__file__).parent / "results"
START_LIMIT_S = 180.0


def machine() -> str:
    cpu = discover().cpu
    return f"{cpu.model_name}, {cpu.logical_cores} logical cores, {platform.platform()}"


def near_zero_model(path: Path) -> Path:
    """y = x + 1 on 16 floats with a symbolic batch: the server's cost with almost no compute."""
    one = numpy_helper.from_array(np.ones(16, np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listeners(pid: int | None = None) -> list[str]:
    """Listening TCP addresses (of ``pid`` and all its descendants when given), from `ss -ltnp`."""
    if shutil.which("ss") is None:
        return []
    pids: set[int] = set()
    if pid is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            pids = {pid, *(child.pid for child in root.children(recursive=True))}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        owners = {int(p) for p in re.findall(r"pid=(\d+),", line)}
        if pid is None or owners & pids:
            rows.append(parts[3])
    return rows


def assert_loopback(addresses: Sequence[str], what: str) -> None:
    """Every listener of a benchmark stays on 127.0.0.1 (or ::1)."""
    wide = [
        a for a in addresses if not a.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:"))
    ]
    if wide:
        raise RuntimeError(f"{what} listens beyond loopback: {wide}")


@dataclass
class Serve:
    """A `crossinfer serve` child process and its ports."""

    proc: subprocess.Popen[str]
    http: str
    grpc: str
    output: list[str]

    def stop(self) -> int:
        return stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], grace_s: float = 60) -> int:
    """SIGTERM (a server drains), then SIGKILL after `grace_s`; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def write_report(report: Mapping[str, Any], out: Path, loads: Sequence[float], digits: int) -> None:
    """Write a turns benchmark's JSON and print its ratios and figures (median, min-max)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for key, value in [*report["ratios"].items(), *sorted(report["figures"].items())]:
        low, mid, high = (f"{value[k]:.{digits}f}" for k in ("min", "median", "max"))
        print(f"{key}: {mid} ({low}-{high})")
    print(f"load average {min(loads):.1f}-{max(loads):.1f}; written {out}")


@contextmanager
def crossinfer_serve(
    source: str, name: str, *options: str, launcher: Sequence[str] = ()
) -> Iterator[Serve]:
    """`crossinfer serve SOURCE --name NAME OPTIONS` on free loopback ports, stopped by SIGTERM.

    ``launcher`` replaces the `crossinfer` command (a script that patches the server, then runs
    the command line with the arguments after it)."""
    cli = list(launcher) or [str(Path(sys.executable).parent / "crossinfer")]
    cmd = [*cli, "serve", source, "--name", name, "--host", "127.0.0.1"]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    cmd += ["--log-level", "warning", *options]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    serve: Serve | None = None
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while serve is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError(f"crossinfer serve exited: {''.join(output)[-2000:]}")
            match = re.search(r"HTTP http://([\d.:]+), gRPC ([\d.:]+)", line)
            if match:
                serve = Serve(proc, match.group(1), match.group(2), output)
        assert_loopback(listeners(proc.pid), "crossinfer serve")
        yield serve
    finally:
        stop_process(proc)
        reader.join(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


@dataclass(frozen=True)
class InProcess:
    """Session.run back to back on one thread: what the server's single instance could reach."""

    batch: int
    throughput: float  # inferences (rows) per second
    p50_us: float
    p99_us: float
    calls: int


def in_process(
    source: str, feeds: Callable[[int], Mapping[str, np.ndarray]], batch: int, seconds: float
) -> InProcess:
    """ONNX Runtime CPU with the server's default session options, timed for ``seconds``."""
    session = get_backend("onnxruntime").prepare(load_model(source), "cpu")
    try:
        inputs = dict(feeds(batch))
        for _ in range(3):
            session.run(inputs)  # warm-up: first runs allocate
        times: list[int] = []
        start = time.perf_counter_ns()
        end = start + int(seconds * 1e9)
        while True:
            t0 = time.perf_counter_ns()
            session.run(inputs)
            t1 = time.perf_counter_ns()
            times.append(t1 - t0)
            if t1 >= end or len(times) >= 5_000_000:
                break
        elapsed = (time.perf_counter_ns() - start) / 1e9
    finally:
        session.close()
    arr = np.array(times) / 1e3
    return InProcess(
        batch=batch,
        throughput=len(times) * batch / elapsed,
        p50_us=float(np.percentile(arr, 50)),
        p99_us=float(np.percentile(arr, 99)),
        calls=len(times),
    )


# --------------------------------------------------------------------------- wrk

_WRK_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format("CROSSINFER_WRK %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int


def v2_json_body(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
            for n, a in inputs.items()
        ]
    }


def v2_binary_body(name: str, x: np.ndarray) -> tuple[bytes, int]:
    """A KServe v2 request with `x` as Triton's binary tensor extension (FP32) and the output
    `logits` asked back binary: the body, and its JSON header's length (the value of the
    Inference-Header-Content-Length header)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + x.tobytes(), len(header)


def run_h2load(cmd: Sequence[str], seconds: int) -> dict[str, float]:
    """Run an h2load command line (time-bounded by its -D): req/s, and the requests not 2xx."""
    done = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", done.stdout)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", done.stdout)
    if done.returncode != 0 or rate is None or codes is None:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stdout[-800:]}")
    return {"rps": float(rate.group(1)), "non_2xx": float(sum(int(g) for g in codes.groups()[1:]))}


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def round_ratio(top: Mapping[int, float], bottom: Mapping[int, float]) -> dict[str, float]:
    """top / bottom of the same round (rounds where either is missing are left out)."""
    values = [top[r] / bottom[r] for r in top if bottom.get(r)]
    return spread(values) if values else {"median": float("nan"), "min": 0.0, "max": 0.0}


def wrk(
    url: str, body: Mapping[str, Any], *, seconds: int, connections: int, workdir: Path
) -> WrkResult:
    """`wrk -t1 -cN -dS --latency` POSTing one fixed JSON body; bounded by ``seconds``."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    body_path = workdir / "body.json"
    body_path.write_text(json.dumps(body))
    script = workdir / "post.lua"
    script.write_text(_WRK_LUA.replace("{body}", str(body_path)))
    cmd = [
        binary,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = re.search(
        r"CROSSINFER_WRK (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", done.stdout
    )
    if done.returncode != 0 or match is None:
        raise RuntimeError(
            f"wrk failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-500:]}"
        )
    reqs, dur_us, status, conn, sock, p50, p99, mx = (int(g) for g in match.groups())
    return WrkResult(
        requests=reqs,
        seconds=dur_us / 1e6,
        rps=reqs / (dur_us / 1e6),
        p50_ms=p50 / 1e3,
        p99_ms=p99 / 1e3,
        max_ms=mx / 1e3,
        non_2xx=status,
        socket_errors=conn + sock,
    )


def wait_http_ok(
    url: str,
    limit_s: float,
    body: bytes | None = None,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Poll ``url`` (GET, or POST ``body``) until it answers 200, for at most ``limit_s``; with
    ``proc``, give up at once when that server process has exited."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + limit_s
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before {url} answered")
        try:
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {limit_s:g} s: {last}")
