"""The HTTP front end at its edges: slow and oversized clients, the parser's own refusals,
model control, confined model paths, content coding, 405s, and large bodies checked early.

Raw sockets on 127.0.0.1 send exactly the bytes a misbehaving client would; every wait is
bounded by a socket timeout.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from serve_models import model_dir
from tritonclient.grpc import service_pb2, service_pb2_grpc

from crossinfer.serve.http_protocol import HttpLimits
from crossinfer.serve.repository import ModelRepository
from crossinfer.serve.server import BackgroundServer, ServerConfig
from crossinfer.zoo import zoo_model_path

LIMITS = HttpLimits(header_timeout_s=1.0, body_timeout_s=1.0, max_header_bytes=16 * 1024)


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model file outside the repository folder."""
    path = tmp_path_factory.mktemp("elsewhere") / "secret.onnx"
    path.write_bytes(zoo_model_path("zoo:mlp").read_bytes())
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("repository")
    model_dir(root, "mlp", zoo_model_path("zoo:mlp"), "max_batch_size = 8\nthreads = 1\n")
    escape = root / "escape"
    escape.mkdir()
    (escape / "config.toml").write_text(f"model = {str(outside)!r}\n")
    config = ServerConfig(http_port=0, grpc_port=0, metrics_port=None, http_limits=LIMITS)
    with BackgroundServer(ModelRepository(root), config) as running:  # control mode: none
        yield running


def exchange(server: BackgroundServer, data: bytes, pause: bool = False) -> tuple[bytes, dict]:
    """Send `data`, read until the server closes; the status line and JSON body."""
    host, port = server.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer[:300]
    return head.split(b"\r\n")[0], json.loads(body)


def test_slow_headers_are_answered_408_and_closed(server: BackgroundServer) -> None:
    status, doc = exchange(server, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert "--header-timeout" in doc["error"]


def test_a_silent_connection_is_closed_after_the_header_timeout(server: BackgroundServer) -> None:
    status, doc = exchange(server, b"")
    assert status.startswith(b"HTTP/1.1 408") and "headers did not arrive" in doc["error"]


def test_a_slow_body_is_answered_408_and_closed(server: BackgroundServer) -> None:
    head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
    status, doc = exchange(server, head)
    assert status.startswith(b"HTTP/1.1 408")
    assert "--body-timeout" in doc["error"]


def test_a_200_kb_header_is_refused_431(server: BackgroundServer) -> None:
    big = b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    status, doc = exchange(server, big)
    assert status.startswith(b"HTTP/1.1 431")
    assert "--max-header-bytes" in doc["error"] and "16384" in doc["error"]


def test_the_parsers_own_rejection_is_a_json_error(server: BackgroundServer) -> None:
    status, doc = exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400")
    assert doc["error"].startswith("invalid HTTP request")


def request(
    server: BackgroundServer, method: str, path: str, body: bytes = b"", **headers: str
) -> tuple[int, bytes, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), response.headers
    finally:
        conn.close()


def test_405_names_the_allowed_method(server: BackgroundServer) -> None:
    status, body, headers = request(server, "GET", "/v2/models/mlp/infer")
    assert status == 405 and headers["Allow"] == "POST"
    assert "takes POST, not GET" in json.loads(body)["error"]
    status, body, headers = request(server, "DELETE", "/v2/health/live")
    assert status == 405 and headers["Allow"] == "GET"


def infer_body(rows: int, values: int | None = None) -> bytes:
    count = rows * 784 if values is None else values
    doc = {
        "inputs": [
            {"name": "features", "shape": [rows, 784], "datatype": "FP32", "data": [0.5] * count}
        ]
    }
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("gzip", "gzip"),
        ("gzip;q=0, identity", None),
        ("gzip;q=0, deflate", "deflate"),
        ("deflate;q=0.5, gzip;q=0.8", "gzip"),
        ("*;q=0", None),
        ("identity", None),
    ],
)
def test_accept_encoding_weights_are_honoured(
    server: BackgroundServer, accept: str, coding: str | None
) -> None:
    status, body, headers = request(
        server, "POST", "/v2/models/mlp/infer", infer_body(8), **{"Accept-Encoding": accept}
    )
    assert status == 200
    assert headers["Content-Encoding"] == coding
    assert headers["Vary"] == "Accept-Encoding"
    if coding == "gzip":
        body = gzip.decompress(body)
    if coding is None:
        assert len(json.loads(body)["outputs"][0]["data"]) == 80


def test_a_large_json_body_with_too_many_values_is_refused_before_decoding(
    server: BackgroundServer,
) -> None:
    # 2 MiB of values for a [1, 784] input: refused by the count, not after a full decode
    status, body, _ = request(server, "POST", "/v2/models/mlp/infer", infer_body(1, 400_000))
    assert status == 400
    error = json.loads(body)["error"]
    assert "has 400003 commas, far more than the 784 values its inputs' shapes declare" in error


def test_load_and_unload_are_refused_unless_explicit(server: BackgroundServer) -> None:
    for action in ("load", "unload"):
        status, body, _ = request(server, "POST", f"/v2/repository/models/mlp/{action}")
        assert status == 503
        error = json.loads(body)["error"]
        assert error.startswith("explicit model load / unload is not allowed if polling is")
        assert "--model-control-mode explicit" in error
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelUnload(
                service_pb2.RepositoryModelUnloadRequest(model_name="mlp"), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not allowed if polling is enabled" in info.value.details()
    status, _, _ = request(server, "GET", "/v2/models/mlp/ready")
    assert status == 200  # still loaded


def test_a_config_model_path_outside_the_repository_is_refused(
    server: BackgroundServer, outside: Path
) -> None:
    _, body, _ = request(server, "POST", "/v2/repository/index", b"{}")
    rows = {row["name"]: row for row in json.loads(body)}
    assert rows["escape"]["state"] == "UNAVAILABLE"
    assert "lies outside the repository" in rows["escape"]["reason"]
    assert "--allow-outside-model-paths" in rows["escape"]["reason"]


def test_outside_model_paths_load_when_allowed(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "config.toml").write_text(f"model = {str(outside)!r}\n")
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "config.toml").write_text('model = "../../elsewhere/secret.onnx"\n')

    async def states(confine: bool) -> dict[str, str]:
        repo = ModelRepository(tmp_path, confine_model_paths=confine)
        await repo.start()
        try:
            return {row["name"]: row["state"] for row in repo.index()}
        finally:
            await repo.stop()

    assert asyncio.run(states(True))["escape"] == "UNAVAILABLE"
    assert asyncio.run(states(True))["up"] == "UNAVAILABLE"
    assert asyncio.run(states(False))["escape"] == "READY"


def test_poll_mode_loads_reloads_and_unloads_what_changes(tmp_path: Path) -> None:
    mlp = zoo_model_path("zoo:mlp")

    async def scenario() -> list[dict[str, str]]:
        repo = ModelRepository(tmp_path, control_mode="poll", poll_interval_s=60)
        seen = []
        await repo.start()
        try:
            model_dir(tmp_path, "late", mlp)  # dropped in while serving
            await repo.poll_once()
            seen.append({row["name"]: row["state"] for row in repo.index()})
            first = repo.get("late")
            (tmp_path / "late" / "config.toml").write_text("max_batch_size = 2\n")
            await repo.poll_once()
            seen.append({"reloaded": str(repo.get("late") is not first)})
            seen.append({"max_batch_size": str(repo.get("late").max_batch_size)})
            for file in (tmp_path / "late").iterdir():
                file.unlink()
            (tmp_path / "late").rmdir()
            await repo.poll_once()
            seen.append({row["name"]: row["state"] for row in repo.index()})
        finally:
            await repo.stop()
        return seen

    loaded, reloaded, batch, removed = asyncio.run(scenario())
    assert loaded == {"late": "READY"}
    assert reloaded == {"reloaded": "True"}
    assert batch == {"max_batch_size": "2"}
    assert removed == {}
