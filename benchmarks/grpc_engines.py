"""What a gRPC call costs a Python server with no work in it, against an HTTP/1.1 request.

Four echo servers answer one stored reply to every request, each in its own process on uvloop:
grpc.aio's server, grpclib (pure Python on h2; only when installed), grpc's C core driven
from one poll thread with each message handed to the loop in batches (the way
`crossinfer.serve.grpc_core` does it, and answered on the poll thread itself: the floor), and
uvicorn + httptools with a raw ASGI app. One C client for all (h2load), a fixed 3 KB request, 1
and 16 connections, each server visited in turn every round (order reversed every other round).
Reported: req/s and the server's CPU per request, split by thread (from /proc), so the cost of
the protocol machinery alone is seen apart from any model.

    apt-get install -y nghttp2-client   # h2load
    uv run --all-extras python benchmarks/grpc_engines.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import RESULTS, machine  # a sibling script

REPLY = b"\x00" * 64
PATH = "/inference.GRPCInferenceService/ModelInfer"


# --------------------------------------------------------------------------- the servers


async def _grpc_aio(port: int) -> None:
    import grpc

    async def infer(request: bytes, context: Any) -> bytes:
        return REPLY

    handler = grpc.unary_unary_rpc_method_handler(infer)
    server = grpc.aio.server()
    generic = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler}
    )
    server.add_generic_rpc_handlers((generic,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _grpclib(port: int) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server

    class Raw(CodecBase):  # type: ignore[misc]
        __content_subtype__ = "proto"

        def encode(self, message: bytes, message_type: Any) -> bytes:
            return message

        def decode(self, data: bytes, message_type: Any) -> bytes:
            return data

    class Echo:
        async def infer(self, stream: Any) -> None:
            await stream.recv_message()
            await stream.send_message(REPLY)

        def __mapping__(self) -> dict[str, Any]:
            return {PATH: Handler(self.infer, Cardinality.UNARY_UNARY, bytes, bytes)}

    server = Server([Echo()], codec=Raw())
    await server.start("127.0.0.1", port)
    await server.wait_closed()


def _core(port: int, on_loop: bool) -> None:
    import uvloop
    from grpc._cython import cygrpc

    cq = cygrpc.CompletionQueue()
    server = cygrpc.Server((), False)
    server.register_completion_queue(cq)
    server.add_http2_port(f"127.0.0.1:{port}".encode())
    server.start()
    new_call = object()
    server.request_call(cq, cq, new_call)

    def answer(call: Any) -> None:
        call.start_server_batch(
            (
                cygrpc.SendInitialMetadataOperation((), 0),
                cygrpc.SendMessageOperation(REPLY, 0),
                cygrpc.SendStatusFromServerOperation((), cygrpc.StatusCode.ok, b"", 0),
                cygrpc.ReceiveCloseOnServerOperation(0),
            ),
            None,
        )

    loop = uvloop.new_event_loop()
    pending: list[Any] = []
    lock = threading.Lock()

    def take() -> None:
        with lock:
            calls = pending[:]
            pending.clear()
        for call in calls:
            answer(call)

    def poll() -> None:
        while True:
            event = cq.poll()
            if event.tag is new_call:
                server.request_call(cq, cq, new_call)
                event.call.start_server_batch(
                    (cygrpc.ReceiveMessageOperation(0),), ("message", event.call)
                )
            elif event.tag is not None:
                call = event.tag[1]
                if not on_loop:
                    answer(call)
                    continue
                with lock:
                    first = not pending
                    pending.append(call)
                if first:
                    loop.call_soon_threadsafe(take)

    if on_loop:
        threading.Thread(target=poll, daemon=True).start()
        loop.run_forever()
    else:
        poll()


def _uvicorn(port: int) -> None:
    import uvicorn

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"64")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": REPLY})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


def serve(kind: str, port: int) -> None:
    import uvloop

    if kind == "uvicorn":
        _uvicorn(port)
    elif kind in ("core-loop", "core-inline"):
        _core(port, on_loop=kind == "core-loop")
    else:
        uvloop.install()
        asyncio.run({"grpc-aio": _grpc_aio, "grpclib": _grpclib}[kind](port))


# --------------------------------------------------------------------------- the runs


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread (by thread name and id) of process `pid`."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        head, rest = text.rsplit(")", 1)
        fields = rest.split()
        out[f"{head.split('(', 1)[1]}:{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def h2load(kind: str, port: int, connections: int, seconds: int, folder: Path) -> dict[str, Any]:
    common = ["-c", str(connections), "-m", "1", "-D", str(seconds), "--warm-up-time", "1"]
    if kind == "uvicorn":
        cmd = ["h2load", "--h1", *common, "-d", str(folder / "http.bin")]
        cmd.append(f"http://127.0.0.1:{port}/v2/models/echo/infer")
    else:
        cmd = ["h2load", *common, "-d", str(folder / "grpc.bin")]
        cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        cmd.append(f"http://127.0.0.1:{port}{PATH}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    requests = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", done.stdout
    )
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", done.stdout)
    if requests is None or rate is None:
        raise RuntimeError(f"h2load against {kind} printed no result: {done.stdout[-500:]}")
    return {"req_s": float(rate.group(1)), "succeeded": int(requests.group(3))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "grpc_engines.json")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load not found: apt-get install -y nghttp2-client")
    kinds = ["grpc-aio", "core-loop", "core-inline", "uvicorn"]
    try:
        import grpclib  # noqa: F401

        kinds.insert(1, "grpclib")
    except ImportError:
        print("grpclib not installed: left out (pip install grpclib)")
    folder = Path(tempfile.mkdtemp(prefix="grpc-engines-"))
    request = b"\x0a\x04echo" + b"\x00" * 3200  # never parsed: every server echoes
    (folder / "http.bin").write_bytes(request)
    (folder / "grpc.bin").write_bytes(b"\x00" + struct.pack(">I", len(request)) + request)
    ports = {kind: 18700 + i for i, kind in enumerate(kinds)}
    procs = {
        kind: subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)])
        for kind, port in ports.items()
    }
    rows: list[dict[str, Any]] = []
    loads = []
    try:
        time.sleep(4)
        for rnd in range(args.rounds):
            order = kinds if rnd % 2 == 0 else kinds[::-1]
            for connections in (1, 16):
                for kind in order:
                    pid = procs[kind].pid
                    before = thread_cpu(pid)
                    result = h2load(kind, ports[kind], connections, args.seconds, folder)
                    after = thread_cpu(pid)
                    n = max(result["succeeded"], 1)
                    threads = {
                        name: round((after[name] - before.get(name, 0.0)) / n * 1e6, 1)
                        for name in after
                        if after[name] - before.get(name, 0.0) > 0
                    }
                    row = {
                        "round": rnd,
                        "server": kind,
                        "connections": connections,
                        **result,
                        "cpu_us_per_request": round(sum(threads.values()), 1),
                        "threads_us_per_request": threads,
                        "load_1m": os.getloadavg()[0],
                    }
                    loads.append(row["load_1m"])
                    rows.append(row)
                    print(
                        f"round {rnd} {kind:12s} c{connections:<3d} {result['req_s']:8.0f} req/s "
                        f"{row['cpu_us_per_request']:7.1f} us CPU/req",
                        flush=True,
                    )
    finally:
        for proc in procs.values():
            proc.terminate()
        shutil.rmtree(folder, ignore_errors=True)
    summary = {}
    print(f"\n{'server':12s} {'conns':>5s} {'req/s':>8s} {'CPU us/req':>10s}  (median, min-max)")
    for kind in kinds:
        for connections in (1, 16):
            mine = [r for r in rows if r["server"] == kind and r["connections"] == connections]
            rate = [r["req_s"] for r in mine]
            cpu = [r["cpu_us_per_request"] for r in mine]
            summary[f"{kind} c{connections}"] = {
                "req_s": statistics.median(rate),
                "cpu_us_per_request": statistics.median(cpu),
                "cpu_min_max": [min(cpu), max(cpu)],
            }
            print(
                f"{kind:12s} {connections:5d} {statistics.median(rate):8.0f} "
                f"{statistics.median(cpu):10.1f}  ({min(cpu):.0f}-{max(cpu):.0f})"
            )
    print(f"load average {min(loads):.1f}-{max(loads):.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "load_1m": [min(loads), max(loads)], "summary": summary}
    args.out.write_text(json.dumps({**report, "runs": rows}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
