"""`crossinfer serve` against a plain FastAPI route for the same model, in turns (issue 14).

The FastAPI server is the minimum a hand-written server does for one model: one worker of
uvicorn (`--http httptools`, uvloop, 127.0.0.1, access log off), one `async def` route
`POST /v2/models/{m}/infer` that reads the body, parses the KServe v2 JSON request (or Triton's
binary-tensor body when `Inference-Header-Content-Length` is sent), runs one ONNX Runtime session
(intra-op 1, inter-op 1, on the event loop thread: no hand-off) on zoo:mlp, and answers the KServe
v2 JSON response (or binary outputs when asked). No validation beyond what the parse does.
`crossinfer serve zoo:mlp --threads 1` answers the same request bytes.

Client: h2load `--h1` (a C client, so the client's cost is the same for both; keep-alive
connections, closed loop, `-m 1`), `-D` seconds after a 1 s warm-up, at 1 and 16 connections, JSON
and binary bodies. Every round visits each (server, body, connections) in turn, the order reversed
every other round (A/B/B/A), so the neighbours' load drifts over all alike. Reported: median and
min-max over rounds of req/s, of the server process's CPU per request (user+system from /proc over
the requests it answered, warm-up included), and of the ratios crossinfer / FastAPI taken within a
round; the 1-minute load average with every run.

``--base-src DIR`` adds a crossinfer server running a base tree (`git archive <commit> src | tar
-x -C /tmp/base`), with new / base ratios, to judge a change to the request path.

    uv run --all-extras python benchmarks/serve_vs_fastapi.py [--base-src /tmp/base/src]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import (  # a sibling script, not a package
    RESULTS,
    assert_loopback,
    crossinfer_serve,
    free_port,
    listeners,
    machine,
    round_ratio,
    run_h2load,
    spread,
    stop_process,
    v2_binary_body,
    wait_http_ok,
    write_report,
)

_FASTAPI_FLAG = "--fastapi-server"


def _fastapi_server() -> None:
    """`python serve_vs_fastapi.py --fastapi-server NAME ONNX PORT`: the plain FastAPI peer."""
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI, Request, Response

    name, path, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    dtypes = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
    answered = [0]
    app = FastAPI()

    async def infer(request: Request) -> Response:
        body = await request.body()
        length = request.headers.get("inference-header-content-length")
        header = json.loads(body[: int(length)] if length else body)
        feeds: dict[str, np.ndarray] = {}
        offset = int(length or 0)
        for item in header["inputs"]:
            dtype = dtypes[item["datatype"]]
            size = (item.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                data = np.frombuffer(body, dtype, int(size) // np.dtype(dtype).itemsize, offset)
                offset += int(size)
            else:
                data = np.asarray(item["data"], dtype)
            feeds[item["name"]] = data.reshape(item["shape"])
        results = session.run(output_names, feeds)
        binary = any(
            (o.get("parameters") or {}).get("binary_data") for o in header.get("outputs") or ()
        )
        outputs: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for out_name, y in zip(output_names, results, strict=True):
            out: dict[str, Any] = {"name": out_name, "shape": list(y.shape), "datatype": "FP32"}
            if binary:
                out["parameters"] = {"binary_data_size": y.nbytes}
                blobs.append(y.tobytes())
            else:
                out["data"] = y.ravel().tolist()
            outputs.append(out)
        doc = json.dumps({"model_name": name, "outputs": outputs}).encode()
        answered[0] += 1
        if not binary:
            return Response(doc, media_type="application/json")
        return Response(
            doc + b"".join(blobs),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(doc))},
        )

    async def count() -> dict[str, int]:
        return {"answered": answered[0]}

    # `from __future__ import annotations` leaves strings FastAPI cannot resolve in this scope
    infer.__annotations__ = {"request": Request, "return": Response}
    count.__annotations__ = {"return": dict[str, int]}
    app.post(f"/v2/models/{name}/infer")(infer)
    app.get("/answered")(count)

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        workers=1,
        access_log=False,
        log_level="warning",
    )


@dataclass
class Server:
    """A server under test: its process, HTTP address, and how many requests it has answered."""

    label: str
    pid: int
    http: str
    model: str

    def answered(self) -> int:
        if self.label == "fastapi":
            with urllib.request.urlopen(f"http://{self.http}/answered", timeout=30) as r:
                return int(json.loads(r.read())["answered"])
        url = f"http://{self.http}/v2/models/{self.model}/stats"
        with urllib.request.urlopen(url, timeout=30) as r:
            stats = json.loads(r.read())["model_stats"][0]["inference_stats"]
        return int(stats["success"]["count"]) + int(stats["fail"]["count"])

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def fastapi_serve(name: str, path: str, body: bytes) -> Iterator[Server]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), _FASTAPI_FLAG, name, path, str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/v2/models/{name}/infer", 120, body)
        assert_loopback(listeners(proc.pid), "fastapi")
        yield Server("fastapi", proc.pid, f"127.0.0.1:{port}", name)
    finally:
        stop_process(proc, grace_s=30)


def _bodies(workdir: Path, name: str, width: int) -> dict[str, tuple[Path, int | None]]:
    """The two request bodies: KServe v2 JSON, and Triton's binary tensors both ways."""
    x = np.full((1, width), 0.5, np.float32)
    plain = {"inputs": [{"name": name, "shape": [1, width], "datatype": "FP32"}]}
    plain["inputs"][0]["data"] = x.ravel().tolist()
    body, header_length = v2_binary_body(name, x)
    (workdir / "json.body").write_text(json.dumps(plain))
    (workdir / "binary.body").write_bytes(body)
    return {
        "json": (workdir / "json.body", None),
        "binary": (workdir / "binary.body", header_length),
    }


def h2load(
    url: str, body: Path, header_length: int | None, connections: int, seconds: int
) -> dict[str, float]:
    """One time-bounded h2load `--h1` run: req/s, and the requests that were not 2xx."""
    binary = shutil.which("h2load")
    if binary is None:
        raise RuntimeError("h2load is not installed: apt-get install -y nghttp2-client")
    cmd = [binary, "--h1", "-D", str(seconds), "--warm-up-time", "1", "-c", str(connections)]
    cmd += ["-m", "1", "-d", str(body)]
    if header_length is None:
        cmd += ["-H", "Content-Type: application/json"]
    else:
        cmd += ["-H", f"Inference-Header-Content-Length: {header_length}"]
        cmd += ["-H", "Content-Type: application/octet-stream"]
    return run_h2load([*cmd, url], seconds)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == _FASTAPI_FLAG:
        _fastapi_server()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-src", type=Path, help="a base tree's src/ folder")
    parser.add_argument("--no-fastapi", action="store_true", help="only base against new")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=3, help="per h2load run, after warm-up")
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--bodies", default="json,binary")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_vs_fastapi.json")
    args = parser.parse_args()
    from crossinfer import load_model

    artifact = load_model("zoo:mlp")
    name, spec = "mlp", artifact.inputs[0]
    width = int(spec.shape[1])  # type: ignore[arg-type]
    levels = [int(c) for c in args.connections.split(",")]
    kinds = args.bodies.split(",")
    samples: dict[str, dict[int, float]] = defaultdict(dict)  # figure -> round -> value
    loads: list[float] = []
    options = ("--threads", "1")
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        bodies = _bodies(Path(tmp), spec.name, width)
        servers: list[Server] = []
        if args.base_src is not None:
            saved = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = str(args.base_src.resolve())  # ahead of this checkout
            try:
                s = stack.enter_context(crossinfer_serve("zoo:mlp", name, *options))
                servers.append(Server("base", s.proc.pid, s.http, name))
            finally:
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
        s = stack.enter_context(crossinfer_serve("zoo:mlp", name, *options))
        servers.append(Server("crossinfer", s.proc.pid, s.http, name))
        if not args.no_fastapi:
            first = bodies["json"][0].read_bytes()
            servers.append(stack.enter_context(fastapi_serve(name, str(artifact.path), first)))
        runs = [(srv, kind, c) for kind in kinds for c in levels for srv in servers]
        for rnd in range(args.rounds):
            for srv, kind, connections in runs if rnd % 2 == 0 else runs[::-1]:
                loads.append(os.getloadavg()[0])
                cpu0, n0 = srv.cpu_s(), srv.answered()
                url = f"http://{srv.http}/v2/models/{name}/infer"
                path, header_length = bodies[kind]
                result = h2load(url, path, header_length, connections, args.seconds)
                cpu1, n1 = srv.cpu_s(), srv.answered()
                figure = f"{srv.label} {kind} c{connections}"
                samples[f"{figure} req/s"][rnd] = result["rps"]
                if n1 > n0:
                    samples[f"{figure} server cpu us/req"][rnd] = 1e6 * (cpu1 - cpu0) / (n1 - n0)
                if result["non_2xx"]:
                    samples[f"{figure} errors"][rnd] = result["non_2xx"]
                print(rnd, figure, f"{result['rps']:.0f} req/s", f"load {loads[-1]:.1f}")
                time.sleep(0.2)
    ratios: dict[str, Any] = {}
    for key, values in sorted(samples.items()):
        label, rest = key.split(" ", 1)
        if label == "crossinfer" and f"fastapi {rest}" in samples:
            ratios[f"crossinfer/fastapi {rest}"] = round_ratio(values, samples[f"fastapi {rest}"])
        if label == "crossinfer" and f"base {rest}" in samples:
            ratios[f"new/base {rest}"] = round_ratio(values, samples[f"base {rest}"])
    report: dict[str, Any] = {
        "benchmark": "serve_vs_fastapi",
        "machine": machine(),
        "client": f"h2load --h1 -D {args.seconds} --warm-up-time 1 -cN -m1 (keep-alive)",
        "servers": {
            "crossinfer": "crossinfer serve zoo:mlp --threads 1",
            "fastapi": "FastAPI async route, uvicorn httptools+uvloop, 1 worker, ORT intra/inter 1",
            **({"base": f"crossinfer serve from {args.base_src}"} if args.base_src else {}),
        },
        "load_average_1min": spread(loads),
        "rounds": args.rounds,
        "ratios": ratios,
        "figures": {k: {**spread(list(v.values())), "by_round": v} for k, v in samples.items()},
    }
    write_report(report, args.out, loads, digits=3)


if __name__ == "__main__":
    main()
