"""SIGTERM with a short --drain-timeout while requests are in flight: what every client gets, and
how long the process takes to exit.

`crossinfer serve MODEL --drain-timeout S` on loopback; N HTTP (binary tensors) and N gRPC
requests start at once, SIGTERM follows after a moment; each client records its answer (HTTP
status and content type, gRPC code and details), and the script records the exit status, the
seconds from SIGTERM to exit, and whether any port still listened before the exit. Bounded: every
client has a 120 s timeout and the process is killed 120 s after SIGTERM.

    uv run --all-extras python benchmarks/serve_drain.py [--model zoo:resnet18] [--requests 32]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import RESULTS, crossinfer_serve, machine  # a sibling script

from crossinfer import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zoo:resnet18")
    parser.add_argument("--requests", type=int, default=32, help="per protocol")
    parser.add_argument("--drain-timeout", type=float, default=2.0)
    parser.add_argument("--sigterm-after", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_drain.json")
    args = parser.parse_args()
    spec = load_model(args.model).inputs[0]
    shape = [1, *(d if isinstance(d, int) else 1 for d in spec.shape[1:])]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    answers: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def record(what: str) -> None:
        with lock:
            answers[what] += 1

    with crossinfer_serve(
        args.model,
        "m",
        "--drain-timeout",
        str(args.drain_timeout),
        "--max-batch-size",
        "8",
        "--threads",
        "1",
    ) as serve:
        host, port = serve.http.split(":")
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": spec.name,
                        "shape": shape,
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ]
            }
        ).encode()
        head = (
            f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
            f"{len(header) + x.nbytes}\r\nInference-Header-Content-Length: {len(header)}\r\n\r\n"
        ).encode()

        def http_client() -> None:
            try:
                with socket.create_connection((host, int(port)), timeout=120) as sock:
                    sock.sendall(head + header + x.tobytes())
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                        if b"\r\n\r\n" in data:
                            break
                status = data.split(b"\r\n")[0].decode(errors="replace")[9:12]
                kind = "json" if b"application/json" in data.lower() else "other"
                record(f"http {status} {kind}" if data else "http no answer")
            except OSError as exc:
                record(f"http {type(exc).__name__}")

        request = service_pb2.ModelInferRequest(model_name="m")
        request.inputs.add(name=spec.name, datatype="FP32", shape=shape)
        request.raw_input_contents.append(x.tobytes())
        channel = grpc.insecure_channel(serve.grpc)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def grpc_client() -> None:
            try:
                stub.ModelInfer(request, timeout=120)
                record("grpc OK")
            except grpc.RpcError as exc:
                reason = "drain timeout" if "--drain-timeout" in exc.details() else exc.details()
                record(f"grpc {exc.code().name} ({reason[:60]})")

        clients = [threading.Thread(target=http_client) for _ in range(args.requests)]
        clients += [threading.Thread(target=grpc_client) for _ in range(args.requests)]
        for client in clients:
            client.start()
        time.sleep(args.sigterm_after)
        load = os.getloadavg()[0]
        sigterm = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        try:
            code = serve.proc.wait(timeout=120)
        except Exception:
            serve.proc.kill()
            code = None
        exit_s = time.monotonic() - sigterm
        for client in clients:
            client.join(timeout=120)
        channel.close()
    report = {
        "machine": machine(),
        "load_average_1min": load,
        "model": args.model,
        "requests_per_protocol": args.requests,
        "drain_timeout_s": args.drain_timeout,
        "exit_status": code,
        "sigterm_to_exit_s": round(exit_s, 2),
        "answers": dict(sorted(answers.items())),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
