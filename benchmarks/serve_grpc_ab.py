"""gRPC against HTTP in one `crossinfer serve` process, and a change against its base, in turns.

One C client for both protocols, so the client's cost is the same on each side: h2load (nghttp2)
POSTs one fixed request, binary tensors both ways: over HTTP/1.1 Triton's binary-tensor body
(`Inference-Header-Content-Length`), over HTTP/2 a framed `ModelInferRequest` with
raw_input_contents. Each run is time-bounded (`-D` seconds after a 1 s warm-up, and a hard
timeout on the client), at 1 and 16 connections (one stream each).

Servers run at once and every round visits each (server, protocol, connections) in turn, the
order reversed every other round, so the neighbours' load drifts over all alike. Reported per
figure: the median and min-max over the rounds of req/s, of the server's CPU per request (its
process's user+system time over the requests its statistics counted, warm-up included, which
swings far less with the load than req/s), and of the ratios taken within a round (gRPC / HTTP
on the same server, new / base on the same protocol). The 1-minute load average is recorded with
every run.

``--base-src`` adds a server running a base tree (`git archive <commit> src | tar -x -C DIR`).
``--probe`` adds a server whose `ModelInfer` skips stages of the answer, chosen by the request's
id: "echo" (a stored answer: grpc.aio's per-call machinery alone), "decode" (decode the request,
answer the stored one), "batcher" (decode and run it, answer the stored one), "full" (the real
answer); that splits a gRPC request's cost between grpc.aio and crossinfer's own stages.
``--sync`` adds a server whose unary gRPC calls go through grpc's sync server (a thread pool in
front of the same service, each call handed to the event loop), to compare with grpc.aio (an
experiment: no streams, no drain).

    apt-get install -y nghttp2-client   # h2load
    git archive HEAD~1 src | tar -x -C /tmp/base
    uv run --all-extras python benchmarks/serve_grpc_ab.py --base-src /tmp/base/src --probe
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import urllib.request
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import (  # a sibling script
    RESULTS,
    Serve,
    crossinfer_serve,
    machine,
    round_ratio,
    run_h2load,
    spread,
    v2_binary_body,
    write_report,
)

PROBE_MODES = ("echo", "decode", "batcher", "full")

# the probe server: `python serve_grpc_ab.py --probe-server serve ...` patches, then serves
_PROBE_FLAG = "--probe-server"


def _probe_server() -> None:
    """Run `crossinfer` with ModelInfer answering per the request's id (see PROBE_MODES)."""
    from crossinfer.cli import main as cli_main
    from crossinfer.serve import grpc as grpc_front

    service = grpc_front._Service
    real = service.ModelInfer
    stored: dict[int, Any] = {}

    async def probe(self: Any, request: Any) -> Any:
        mode = request.id
        if mode not in PROBE_MODES[:3] or not stored:
            answer = await real(self, request)
            stored.setdefault(0, answer)
            return answer
        model = self._model(request.model_name, request.model_version)
        if mode == "batcher":
            await model.infer(grpc_front.decode_infer_request(request, model, self._shm))
            return stored[0]
        if mode == "decode":
            grpc_front.decode_infer_request(request, model, self._shm)
        # counted as a success, so the benchmark's CPU per request covers these answers too
        model.batcher._success = model.batcher._success.add(0)
        return stored[0]

    service.ModelInfer = probe  # type: ignore[method-assign]
    sys.argv = ["crossinfer", *sys.argv[2:]]
    cli_main()


_SYNC_FLAG = "--sync-server"


def _sync_server() -> None:
    """Run `crossinfer` with grpc's sync server (a thread pool) in front of the gRPC service."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from crossinfer.cli import main as cli_main
    from crossinfer.serve import grpc as grpc_front
    from crossinfer.serve import grpc_messages as pb

    async def start(
        repository: Any, host: str, port: int, *, server_ready: Any = None, **options: Any
    ) -> Any:
        loop = asyncio.get_running_loop()
        ready = server_ready or grpc_front._all_models_ready(repository)
        registry = options.get("shared_memory") or grpc_front.SharedMemoryRegistry()
        service = grpc_front._Service(repository, ready, registry)

        def unary(handler: Any) -> Any:
            def call(request: Any, context: Any) -> Any:
                if isinstance(request, grpc_front._Unparseable):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
                try:
                    return asyncio.run_coroutine_threadsafe(handler(request), loop).result()
                except (grpc_front.CrossinferError, ValueError) as exc:
                    context.abort(*grpc_front._status_of(exc))

            return call

        handlers = {
            rpc.name: grpc.unary_unary_rpc_method_handler(
                unary(getattr(service, rpc.name)),
                request_deserializer=grpc_front._decoder(rpc.request),
                response_serializer=grpc_front._serialize,
            )
            for rpc in pb.RPCS
            if not rpc.streaming
        }
        server = grpc.server(ThreadPoolExecutor(16), options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(pb.SERVICE, handlers),)
        )
        server.add_insecure_port(f"{host}:{port}")
        server.start()

        class Stopper:
            async def stop(self, grace_s: float | None) -> None:
                server.stop(0)

            def abort_in_flight(self, reason: str) -> int:
                return 0

        return Stopper()

    grpc_front.start_grpc_server = start  # type: ignore[assignment]
    sys.argv = ["crossinfer", *sys.argv[2:]]
    cli_main()


def _bodies(workdir: Path, model: str, name: str, width: int) -> dict[str, Path]:
    """The request bodies: HTTP binary, and one gRPC frame per probe mode."""
    from crossinfer.serve import grpc_messages as pb

    x = np.full((1, width), 0.5, np.float32)
    body, header_length = v2_binary_body(name, x)
    bodies = {"http": workdir / "http.bin"}
    bodies["http"].write_bytes(body)
    (workdir / "http.len").write_text(str(header_length))
    for mode in PROBE_MODES:
        request: Any = pb.new("ModelInferRequest", model_name=model, id=mode)
        request.inputs.add(name=name, datatype="FP32", shape=[1, width])
        request.raw_input_contents.append(x.tobytes())
        data = request.SerializeToString()
        path = workdir / f"grpc_{mode}.bin"
        path.write_bytes(b"\x00" + struct.pack(">I", len(data)) + data)
        bodies[f"grpc_{mode}"] = path
    return bodies


def h2load(
    serve: Serve, model: str, body: Path, protocol: str, connections: int, seconds: int
) -> dict[str, float]:
    """One time-bounded h2load run: req/s, and the requests that were not 2xx."""
    binary = shutil.which("h2load")
    if binary is None:
        raise RuntimeError("h2load is not installed: apt-get install -y nghttp2-client")
    cmd = [binary, "-D", str(seconds), "--warm-up-time", "1", "-c", str(connections), "-m", "1"]
    cmd += ["-d", str(body)]
    if protocol == "http":
        length = (body.parent / "http.len").read_text()
        cmd += ["--h1", "-H", f"Inference-Header-Content-Length: {length}"]
        cmd += ["-H", "Content-Type: application/octet-stream"]
        cmd += [f"http://{serve.http}/v2/models/{model}/infer"]
    else:
        cmd += ["-H", "Content-Type: application/grpc", "-H", "TE: trailers"]
        cmd += [f"http://{serve.grpc}/inference.GRPCInferenceService/ModelInfer"]
    return run_h2load(cmd, seconds)


def _served(serve: Serve, model: str) -> tuple[float, int, int]:
    """The server's CPU seconds so far, and the successes and failures its statistics count."""
    with urllib.request.urlopen(f"http://{serve.http}/v2/models/{model}/stats", timeout=30) as r:
        stats = json.loads(r.read())["model_stats"][0]["inference_stats"]
    fields = Path(f"/proc/{serve.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, int(stats["success"]["count"]), int(stats["fail"]["count"])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == _PROBE_FLAG:
        _probe_server()
        return
    if len(sys.argv) > 1 and sys.argv[1] == _SYNC_FLAG:
        _sync_server()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-src", type=Path, help="a base tree's src/ folder")
    parser.add_argument("--probe", action="store_true", help="add the stage-skipping server")
    parser.add_argument("--sync", action="store_true", help="add the sync gRPC server")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=3, help="per h2load run, after warm-up")
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--model", default="zoo:mlp")
    parser.add_argument("--threads", default="1", help="crossinfer serve --threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_grpc_ab.json")
    args = parser.parse_args()
    from crossinfer import load_model

    name = args.model.removeprefix("zoo:")
    spec = load_model(args.model).inputs[0]
    width = int(spec.shape[1]) if spec.shape and isinstance(spec.shape[1], int) else 16
    levels = [int(c) for c in args.connections.split(",")]
    samples: dict[str, dict[int, float]] = defaultdict(dict)  # figure -> round -> value
    loads: list[float] = []
    options = ("--threads", args.threads)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        bodies = _bodies(Path(tmp), name, spec.name, width)
        servers: dict[str, Serve] = {}
        if args.base_src is not None:
            saved = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = str(args.base_src.resolve())  # ahead of this checkout
            try:
                servers["base"] = stack.enter_context(crossinfer_serve(args.model, name, *options))
            finally:
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
        servers["new"] = stack.enter_context(crossinfer_serve(args.model, name, *options))
        if args.probe:
            launcher = (sys.executable, str(Path(__file__).resolve()), _PROBE_FLAG)
            servers["probe"] = stack.enter_context(
                crossinfer_serve(args.model, name, *options, launcher=launcher)
            )
        if args.sync:
            launcher = (sys.executable, str(Path(__file__).resolve()), _SYNC_FLAG)
            servers["sync"] = stack.enter_context(
                crossinfer_serve(args.model, name, *options, launcher=launcher)
            )
        runs: list[tuple[str, str, str, int]] = []  # server, protocol, body key, connections
        for label in servers:
            for connections in levels:
                runs.append((label, "http", "http", connections))
                modes = PROBE_MODES if label == "probe" else ("full",)
                runs += [(label, "grpc", f"grpc_{m}", connections) for m in modes]
        for rnd in range(args.rounds):
            for label, protocol, key, connections in runs if rnd % 2 == 0 else runs[::-1]:
                serve = servers[label]
                loads.append(os.getloadavg()[0])
                before = _served(serve, name)
                result = h2load(serve, name, bodies[key], protocol, connections, args.seconds)
                after = _served(serve, name)
                answered = (after[1] - before[1]) + (after[2] - before[2])
                figure = f"{label} {key.replace('grpc_full', 'grpc').replace('_', ':')}"
                figure += f" c{connections}"
                samples[f"{figure} req/s"][rnd] = result["rps"]
                if answered:
                    samples[f"{figure} server cpu us/req"][rnd] = (
                        1e6 * (after[0] - before[0]) / answered
                    )
                if result["non_2xx"] or after[2] != before[2]:
                    samples[f"{figure} errors"][rnd] = result["non_2xx"] + after[2] - before[2]
                print(rnd, figure, f"{result['rps']:.0f} req/s", f"load {loads[-1]:.1f}")
    ratios: dict[str, Any] = {}
    for key, values in sorted(samples.items()):
        label, front, rest = key.split(" ", 2)
        if front.startswith("grpc") and key.endswith("req/s"):
            http = samples.get(f"{label} http {rest}")
            if http:
                ratios[f"{label} {front}/http {rest}"] = round_ratio(values, http)
        if key.startswith("new ") and f"base {key[4:]}" in samples:
            ratios[f"new/base {key[4:]}"] = round_ratio(values, samples[f"base {key[4:]}"])
        if key.startswith("sync grpc ") and f"new {key[5:]}" in samples:
            ratios[f"sync/new {key[5:]}"] = round_ratio(values, samples[f"new {key[5:]}"])
    report: dict[str, Any] = {
        "benchmark": "serve_grpc_ab",
        "machine": machine(),
        "client": f"h2load -D {args.seconds} --warm-up-time 1 -cN -m1, binary tensors both ways",
        "server": f"crossinfer serve {args.model} --threads {args.threads}",
        "load_average_1min": spread(loads),
        "rounds": args.rounds,
        "ratios": ratios,
        "figures": {k: {**spread(list(v.values())), "by_round": v} for k, v in samples.items()},
    }
    write_report(report, args.out, loads, digits=2)


if __name__ == "__main__":
    main()
