"""`crossinfer serve` as a user runs it: a child process, its logs, SIGTERM under load, bad input.

The load loops are bounded in requests and time; every listener is on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_models import reference

from crossinfer.serve.repository import DELAY_SCHEDULER_ENV

CLI = str(Path(sys.executable).parent / "crossinfer")
START_LIMIT_S = 120.0


def env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "400"}  # rich prints each message on one line


class ServeProcess:
    """`crossinfer serve ARGS` on free loopback ports, its JSON log lines collected."""

    def __init__(self, *args: str, grpc: bool = False) -> None:
        grpc_port = "0" if grpc else "-1"
        self.proc = subprocess.Popen(
            [
                CLI,
                "serve",
                *args,
                "--http-port",
                "0",
                "--grpc-port",
                grpc_port,
                "--metrics-port",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.wait_for("server_ready", START_LIMIT_S)
        self.ports: dict[str, int] = ready["ports"]
        self.port = self.ports["http"]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put(None)

    def finish(self, limit_s: float = 60) -> int:
        """Wait for the process to exit; its exit code."""
        code = self.proc.wait(timeout=limit_s)
        self._reader.join(timeout=limit_s)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code

    def wait_for(self, event: str, limit_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                item = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if item is None:
                break
            if item["event"] == event:
                return item
        self.proc.kill()
        self.finish()
        raise AssertionError(f"no {event} event; the server said:\n{''.join(self.lines)}")


class LoadThread(threading.Thread):
    """Sends one-row requests on a keep-alive connection until the server stops taking them."""

    def __init__(self, port: int, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.seed, self.stop = port, seed, stop
        self.ok: list[tuple[float, np.ndarray, list[float]]] = []  # (time, input, logits)
        self.refused: list[str] = []  # connection-level failures: never accepted
        self.bad: list[str] = []  # any HTTP answer but 200: a lost or failed accepted request

    def run(self) -> None:
        rng = np.random.default_rng(self.seed)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        for _ in range(2000):  # bounded; the stop event or a refused connection ends it sooner
            if self.stop.is_set():
                break
            x = rng.random((1, 784), dtype=np.float32)
            doc = {
                "inputs": [
                    {
                        "name": "features",
                        "shape": [1, 784],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
            try:
                conn.request("POST", "/v2/models/mlp/infer", body=json.dumps(doc))
                response = conn.getresponse()
                payload = response.read()
            except (ConnectionError, http.client.HTTPException, TimeoutError) as exc:
                self.refused.append(type(exc).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                try:
                    conn.connect()
                except ConnectionError:
                    break  # the listener is closed: the server no longer accepts
                continue
            if response.status != 200:
                self.bad.append(f"{response.status} {payload[:200]!r}")
                continue
            self.ok.append((time.monotonic(), x, json.loads(payload)["outputs"][0]["data"]))
        conn.close()


def test_sigterm_under_load_finishes_every_accepted_request() -> None:
    # a long queue delay keeps requests queued at every moment, so SIGTERM lands on some
    server = ServeProcess(
        "zoo:mlp", "--max-batch-size", "64", "--max-queue-delay-us", "100000", "--threads", "1"
    )
    stop = threading.Event()
    threads = [LoadThread(server.port, seed, stop) for seed in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while sum(len(t.ok) for t in threads) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    stopped = server.wait_for("server_stopped", 60)
    assert server.finish() == 0
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    ok = [item for t in threads for item in t.ok]
    assert [b for t in threads for b in t.bad] == []  # no accepted request failed
    # what the server finished is exactly what the clients received: nothing lost in between
    assert stopped["models"]["mlp"]["success"] == len(ok)
    assert stopped["models"]["mlp"]["fail"] == 0
    assert any(when > sigterm_at for when, _, _ in ok)  # requests in flight at SIGTERM finished
    for _, x, logits in ok[:: max(len(ok) // 10, 1)]:
        want = reference("zoo:mlp", {"features": x})["logits"].ravel()
        np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    batches = stopped["models"]["mlp"]["execution_count"]
    assert batches < len(ok)  # the queue delay made batches of several requests


def test_startup_line_config_and_metrics_of_a_real_process() -> None:
    server = ServeProcess("zoo:digits", "--max-batch-size", "4")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/v2/models/digits/config")
        assert json.loads(conn.getresponse().read())["max_batch_size"] == 4
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", server.ports["metrics"], timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        assert 'nv_inference_request_success{model="digits",version="1"} 0' in text
        for _ in range(100):  # printed right after the server_ready event
            if any("crossinfer serve: HTTP http://127.0.0.1:" in line for line in server.lines):
                break
            time.sleep(0.05)
        assert any("crossinfer serve: HTTP http://127.0.0.1:" in line for line in server.lines)
        assert any('"event":"model_ready"' in line for line in server.lines)
    finally:
        server.proc.send_signal(signal.SIGINT)
        assert server.finish() == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "serve", *args], capture_output=True, text=True, env=env(), timeout=START_LIMIT_S
    )


def test_bad_sources_and_options_exit_2_with_one_line(tmp_path: Path) -> None:
    for args, fragment in [
        ((str(tmp_path / "missing.onnx"),), "missing.onnx does not exist"),
        (("zoo:nope",), "unknown zoo model 'nope'"),
        (("zoo:mlp", "--name", "a b"), "choose one with --name"),
        (("zoo:mlp", "--preferred-batch-sizes", "4,x"), "--preferred-batch-sizes '4,x'"),
        (("zoo:mlp", "--log-level", "loud"), "--log-level 'loud'"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]


def test_busy_port_and_nothing_loadable(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "zoo:mlp", "--http-port", str(port), "--grpc-port", "-1", "--metrics-port", "-1"
        )
    assert result.returncode == 2
    assert f"cannot listen for http on 127.0.0.1:{port}" in result.stderr
    assert "--http-port" in result.stderr

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    result = run_cli(str(broken), "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1")
    assert result.returncode == 1
    assert "model broken: UNAVAILABLE" in result.stderr
    assert "no model could be loaded" in result.stderr


def test_help_names_every_option() -> None:
    result = subprocess.run([CLI, "serve", "--help"], capture_output=True, text=True, env=env())
    assert result.returncode == 0
    for option in (
        "--host",
        "--http-port",
        "--grpc-port",
        "--metrics-port",
        "--max-batch-size",
        "--max-queue-delay-us",
        "--instances",
        "--backend",
        "--precision",
    ):
        assert option in result.stdout


def test_a_second_signal_exits_at_once() -> None:
    server = ServeProcess("zoo:mlp")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as stalled:
        # half a request: a graceful shutdown would wait for its body (up to --drain-timeout)
        stalled.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for("server_stopping", 30)
        time.sleep(0.3)
        assert server.proc.poll() is None  # still draining
        server.proc.send_signal(signal.SIGTERM)
        assert server.finish(limit_s=15) == 128 + signal.SIGTERM
    assert any('"action":"exit now, not draining"' in line for line in server.lines)


def test_a_held_batcher_does_not_stall_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    # Triton's delay-scheduler hook never reaches 1000 requests: shutdown releases it
    monkeypatch.setenv(DELAY_SCHEDULER_ENV, "1000")
    server = ServeProcess("zoo:mlp")
    result: list[int] = []

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        body = {
            "inputs": [
                {"name": "features", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}
            ]
        }
        conn.request("POST", "/v2/models/mlp/infer", body=json.dumps(body))
        result.append(conn.getresponse().status)
        conn.close()

    client = threading.Thread(target=one)
    client.start()
    time.sleep(0.5)  # the request sits in the held queue
    assert not result
    server.proc.send_signal(signal.SIGTERM)
    client.join(timeout=30)
    assert result == [200]
    assert server.finish() == 0


def test_a_drain_that_times_out_answers_closes_every_port_and_exits_non_zero() -> None:
    """--drain-timeout is a hard end: what is still running gets a protocol error with the
    reason (HTTP 503 JSON, gRPC UNAVAILABLE), then every port closes and the process exits 3."""
    import grpc
    from tritonclient.grpc import service_pb2

    server = ServeProcess("zoo:mlp", "--drain-timeout", "1", grpc=True)
    ports = dict(server.ports)
    assert set(ports) == {"http", "grpc", "metrics"}
    # an HTTP request whose body never completes: it is in flight until the deadline
    stalled = socket.create_connection(("127.0.0.1", ports["http"]), timeout=30)
    stalled.sendall(
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
    )
    # a gRPC stream that stays open without a frame
    hang_up = threading.Event()

    def frames() -> Any:
        hang_up.wait(60)
        return
        yield  # a generator that sends nothing

    channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}")
    call = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=service_pb2.ModelInferRequest.SerializeToString,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )
    grpc_error: list[grpc.RpcError] = []

    def read_stream() -> None:
        try:
            list(call(frames(), timeout=60))
        except grpc.RpcError as exc:
            grpc_error.append(exc)

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    time.sleep(0.5)  # both requests are in flight
    server.proc.send_signal(signal.SIGTERM)
    try:
        answer = b""
        while chunk := stalled.recv(65536):
            answer += chunk
        reader.join(timeout=30)
        code = server.finish(limit_s=30)  # bounded: a hang fails here
    finally:
        hang_up.set()
        stalled.close()
        channel.close()
        if server.proc.poll() is None:
            server.proc.kill()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer[:300]
    assert b"application/json" in head
    assert "--drain-timeout" in json.loads(body)["error"]
    assert grpc_error and grpc_error[0].code() == grpc.StatusCode.UNAVAILABLE
    assert "--drain-timeout" in grpc_error[0].details()
    assert code == 3, "".join(server.lines)[-3000:]
    assert any('"event":"drain_timeout"' in line for line in server.lines)
    for port in ports.values():  # nothing listens any more
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
