"""The HTTP front end through unmodified tritonclient (sync and aio) and raw requests.

One server for the whole file, in a thread on 127.0.0.1 with free ports; results are compared
with the same models run in-process.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import http.client
import json
import logging
import re
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from prometheus_client.parser import text_string_to_metric_families
from serve_models import (
    bf16_identity_model,
    bytes_identity_model,
    digits_spec,
    fp16_add_model,
    model_dir,
    reference,
    two_output_model,
)
from tritonclient.utils import InferenceServerException

from crossinfer.serve.events import LOGGER_NAME, JsonFormatter
from crossinfer.serve.repository import ModelRepository, open_repository
from crossinfer.serve.server import BackgroundServer, ServerConfig
from crossinfer.zoo import zoo_dataset, zoo_model_path

MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("repository")
    mlp = zoo_model_path("zoo:mlp")
    model_dir(root, "mlp", mlp, "max_batch_size = 8\nthreads = 1\n")
    model_dir(root, "held", mlp, "max_batch_size = 8\npriority_levels = 2\nthreads = 1\n")
    digits_spec(root)
    model_dir(root, "text", bytes_identity_model())
    model_dir(root, "half", fp16_add_model())
    model_dir(root, "two", two_output_model())
    model_dir(root, "bf16", bf16_identity_model(), 'backend = "openvino"\n')
    (root / "broken").mkdir()
    (root / "broken" / "model.onnx").write_bytes(b"\x08\x07garbage")
    config = ServerConfig(http_port=0, grpc_port=None, metrics_port=0, max_body_bytes=MAX_BODY)
    # explicit: test_repository_index_load_unload loads and unloads as a client
    repository = ModelRepository(root, control_mode="explicit")
    with BackgroundServer(repository, config) as background:
        yield background


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()
    del c
    # the client's __del__ joins a gevent pool, which fails on any other thread (the server's,
    # if a garbage collection happened to run there): collect it here, on the main thread
    gc.collect()


def raw(
    server: BackgroundServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> Any:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 784), dtype=np.float32)


def stats(client: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    entry: dict[str, Any] = client.get_inference_statistics(model)["model_stats"][0]
    return entry


# --- health, metadata, config -----------------------------------------------------------------


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("mlp", "2")
    meta = client.get_server_metadata()
    assert meta["name"] == "crossinfer"
    for extension in ("binary_tensor_data", "model_configuration", "statistics"):
        assert extension in meta["extensions"]
    model = client.get_model_metadata("mlp", "1")
    assert model == {
        "name": "mlp",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }


def test_config_has_what_perf_analyzer_reads(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("features", "TYPE_FP32", [784])
    ]
    assert [t["name"] for t in config["output"]] == ["logits"]
    assert "dynamic_batching" in config
    assert config["model_transaction_policy"]["decoupled"] is False
    assert client.get_model_config("digits")["max_batch_size"] == 16  # from the spec


# --- infer ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binary_in", "binary_out", "compression"),
    [(True, True, None), (False, False, None), (True, False, "gzip"), (False, True, "deflate")],
)
def test_infer_matches_in_process(
    client: httpclient.InferenceServerClient,
    binary_in: bool,
    binary_out: bool,
    compression: str | None,
) -> None:
    x = features(3)
    result = client.infer(
        "mlp",
        [infer_input("features", x, "FP32", binary_in)],
        outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary_out)],
        request_id="r-1",
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )
    want = reference("zoo:mlp", {"features": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-6, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == "mlp"


def test_large_json_request_parses_off_the_loop_and_matches(
    client: httpclient.InferenceServerClient,
) -> None:
    x = features(8, seed=3)  # about 130 KB of JSON numbers: parsed in a worker thread
    result = client.infer("mlp", [infer_input("features", x, "FP32", binary=False)])
    want = reference("zoo:mlp", {"features": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-6, atol=1e-6)


def test_aio_client_concurrent_requests_on_the_digits_spec(server: BackgroundServer) -> None:
    data = zoo_dataset("zoo:digits")
    assert data is not None
    pixels = data.inputs["pixels"][:12]

    async def main() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(server.http_url) as c:
            assert await c.is_model_ready("digits")

            async def one(row: np.ndarray) -> np.ndarray:
                tensor = aioclient.InferInput("pixels", [1, 64], "FP32")
                tensor.set_data_from_numpy(row[None])
                result = await c.infer("digits", [tensor])
                out: np.ndarray = result.as_numpy("logits")
                return out

            return list(await asyncio.gather(*(one(row) for row in pixels)))

    got = np.concatenate(asyncio.run(main()))
    want = reference(zoo_model_path("zoo:digits"), {"pixels": pixels})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_and_fp16_tensors(client: httpclient.InferenceServerClient, binary: bool) -> None:
    text = np.array([["naïve", "a"], ["", "x" * 300]], dtype=object)
    result = client.infer(
        "text",
        [infer_input("text", text, "BYTES", binary)],
        outputs=[httpclient.InferRequestedOutput("same", binary_data=binary)],
    )
    same = result.as_numpy("same")
    assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in same] == [
        ["naïve", "a"],
        ["", "x" * 300],
    ]
    x = np.array([[0.25, -1.5, 1000, 3.0]], np.float16)
    result = client.infer(
        "half",
        [infer_input("x", x, "FP16", binary)],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)],
    )
    y = result.as_numpy("y")
    assert result.get_output("y")["datatype"] == "FP16"
    np.testing.assert_array_equal(y.astype(np.float16), x + np.float16(0.5))


def test_bf16_tensors(server: BackgroundServer, client: httpclient.InferenceServerClient) -> None:
    x = np.array([[1.5, -2.0, 0.0078125, 256.0]], np.float32)  # each exact in BF16
    result = client.infer("bf16", [infer_input("x", x, "BF16")])  # tritonclient: binary only
    assert result.get_output("y")["datatype"] == "BF16"  # as the metadata says, whatever ran it
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    tensor = {"name": "x", "shape": [1, 4], "datatype": "BF16", "data": x.ravel().tolist()}
    status, payload, _ = raw(server, "POST", "/v2/models/bf16/infer", _json([tensor]))
    assert status == 200, payload
    out = json.loads(payload)["outputs"][0]
    assert (out["datatype"], out["data"]) == ("BF16", x.ravel().tolist())


def test_requested_outputs_only_those_in_their_form(
    client: httpclient.InferenceServerClient,
) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 10, np.float32)
    result = client.infer(
        "two",
        [infer_input("a", a, "FP32"), infer_input("b", b, "FP32", binary=False)],
        outputs=[httpclient.InferRequestedOutput("summed", binary_data=False)],
    )
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["summed"]
    assert response["outputs"][0]["data"] == (a + b).ravel().tolist()
    assert result.as_numpy("doubled") is None
    both = client.infer("two", [infer_input("a", a, "FP32"), infer_input("b", b, "FP32")])
    np.testing.assert_array_equal(both.as_numpy("doubled"), 2 * a)


# --- batching, schedule policy -----------------------------------------------------------------


def test_held_requests_form_exactly_one_batch(
    server: BackgroundServer, client: httpclient.InferenceServerClient
) -> None:
    model = server.server.repository.get("held")
    before = stats(client, "held")
    rows = [2, 3, 1]
    server.call_soon(lambda: model.batcher.hold_until(len(rows)))

    async def main() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(server.http_url) as c:

            async def one(n: int, seed: int) -> np.ndarray:
                tensor = aioclient.InferInput("features", [n, 784], "FP32")
                tensor.set_data_from_numpy(features(n, seed))
                out: np.ndarray = (await c.infer("held", [tensor])).as_numpy("logits")
                return out

            return list(await asyncio.gather(*(one(n, i) for i, n in enumerate(rows))))

    outs = asyncio.run(main())
    for i, (n, out) in enumerate(zip(rows, outs, strict=True)):
        want = reference("zoo:mlp", {"features": features(n, i)})["logits"]
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    after = stats(client, "held")
    assert after["execution_count"] - before["execution_count"] == 1
    assert after["inference_count"] - before["inference_count"] == 6
    by_size = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    old = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    assert by_size[6] - old.get(6, 0) == 1
    success = after["inference_stats"]["success"]["count"]
    assert success - before["inference_stats"]["success"]["count"] == 3


def test_timeout_and_priority_parameters(
    server: BackgroundServer, client: httpclient.InferenceServerClient
) -> None:
    model = server.server.repository.get("held")
    server.call_soon(lambda: model.batcher.hold_until(1000))
    try:
        with pytest.raises(InferenceServerException, match="Request timeout expired"):
            client.infer("held", [infer_input("features", features(1), "FP32")], timeout=2000)
    finally:
        server.call_soon(model.batcher.release)
    with pytest.raises(InferenceServerException, match=r"priority must lie in 1\.\.2"):
        client.infer("held", [infer_input("features", features(1), "FP32")], priority=3)
    result = client.infer("held", [infer_input("features", features(1), "FP32")], priority=2)
    assert result.as_numpy("logits").shape == (1, 10)


# --- statistics, repository ---------------------------------------------------------------------


def test_statistics_endpoints(
    server: BackgroundServer, client: httpclient.InferenceServerClient
) -> None:
    client.infer("mlp", [infer_input("features", features(2), "FP32")])
    status, body, _ = raw(server, "GET", "/v2/models/stats")
    assert status == 200
    every = {entry["name"]: entry for entry in json.loads(body)["model_stats"]}
    assert {"mlp", "held", "digits", "text", "half", "two"} <= set(every)
    one = stats(client, "mlp")
    assert one["inference_stats"]["success"]["count"] >= 1
    assert set(one["inference_stats"]) == {
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    }
    status, body, _ = raw(server, "GET", "/v2/models/mlp/versions/1/stats")
    assert status == 200 and json.loads(body)["model_stats"][0]["name"] == "mlp"
    status, body, _ = raw(server, "GET", "/v2/models/nope/stats")
    assert status == 404 and "unknown model 'nope'" in json.loads(body)["error"]


def test_repository_index_load_unload(client: httpclient.InferenceServerClient) -> None:
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["mlp"]["state"] == "READY"
    assert index["broken"]["state"] == "UNAVAILABLE" and "model.onnx" in index["broken"]["reason"]
    a = np.ones((1, 3), np.float32)
    client.unload_model("two")
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert (index["two"]["state"], index["two"]["reason"]) == ("UNAVAILABLE", "unloaded")
    with pytest.raises(InferenceServerException, match="not ready"):
        client.infer("two", [infer_input("a", a, "FP32"), infer_input("b", a, "FP32")])
    assert client.is_model_ready("mlp")  # the others keep serving
    client.load_model("two")
    result = client.infer("two", [infer_input("a", a, "FP32"), infer_input("b", a, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("summed"), 2 * a)
    with pytest.raises(InferenceServerException, match="failed to load model 'broken'"):
        client.load_model("broken")
    with pytest.raises(InferenceServerException, match="no model 'nope'"):
        client.load_model("nope")


# --- bad input ---------------------------------------------------------------------------------


def _json(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


_ONE = {"name": "features", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}
_BIN_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "features",
                "shape": [1, 784],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 3136},
            }
        ]
    }
).encode()

BAD_REQUESTS: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    # (id, method, path, body, headers, status, fragment of the error)
    (
        "unknown model",
        "POST",
        "/v2/models/nope/infer",
        _json([_ONE]),
        {},
        404,
        "unknown model 'nope'",
    ),
    (
        "unknown version",
        "POST",
        "/v2/models/mlp/versions/7/infer",
        _json([_ONE]),
        {},
        404,
        "no version '7'",
    ),
    (
        "not loaded",
        "POST",
        "/v2/models/broken/infer",
        _json([_ONE]),
        {},
        503,
        "model 'broken' is not ready",
    ),
    (
        "unknown input",
        "POST",
        "/v2/models/mlp/infer",
        _json([{**_ONE, "name": "pixels"}]),
        {},
        400,
        "unexpected input 'pixels'",
    ),
    (
        "missing input",
        "POST",
        "/v2/models/mlp/infer",
        _json([]),
        {},
        400,
        "missing input 'features' (FP32 of shape [-1,784])",
    ),
    (
        "wrong dtype",
        "POST",
        "/v2/models/mlp/infer",
        _json([{**_ONE, "datatype": "INT32"}]),
        {},
        400,
        "model input 'features' expects FP32 of shape [-1,784], got INT32 [1,784]",
    ),
    (
        "wrong shape",
        "POST",
        "/v2/models/mlp/infer",
        _json([{**_ONE, "shape": [1, 783]}]),
        {},
        400,
        "got FP32 [1,783]",
    ),
    (
        "element count",
        "POST",
        "/v2/models/mlp/infer",
        _json([{**_ONE, "data": [1.0, 2.0]}]),
        {},
        400,
        "input 'features' has 2 elements in 'data' but FP32 [1,784] needs 784",
    ),
    (
        "batch too large",
        "POST",
        "/v2/models/mlp/infer",
        _json([{**_ONE, "shape": [9, 784], "data": [0.0] * 9 * 784}]),
        {},
        400,
        "1..8 (max_batch_size)",
    ),
    (
        "binary size",
        "POST",
        "/v2/models/mlp/infer",
        _BIN_HEADER + b"\0" * 3000,
        {"Inference-Header-Content-Length": str(len(_BIN_HEADER))},
        400,
        "input 'features' declares binary_data_size 3136 but only 3000 bytes",
    ),
    (
        "binary extra",
        "POST",
        "/v2/models/mlp/infer",
        _BIN_HEADER + b"\0" * 3140,
        {"Inference-Header-Content-Length": str(len(_BIN_HEADER))},
        400,
        "4 bytes of binary data after input 'features'",
    ),
    (
        "truncated",
        "POST",
        "/v2/models/mlp/infer",
        _BIN_HEADER[:50],
        {"Inference-Header-Content-Length": str(len(_BIN_HEADER))},
        400,
        "truncated",
    ),
    (
        "header length",
        "POST",
        "/v2/models/mlp/infer",
        _json([_ONE]),
        {"Inference-Header-Content-Length": "ten"},
        400,
        "Inference-Header-Content-Length must be an integer",
    ),
    (
        "oversized",
        "POST",
        "/v2/models/mlp/infer",
        b"[" * (MAX_BODY + 1),
        {},
        413,
        f"more than the limit of {MAX_BODY} bytes",
    ),
    (
        "zip bomb",
        "POST",
        "/v2/models/mlp/infer",
        gzip.compress(b" " * (MAX_BODY * 4)),
        {"Content-Encoding": "gzip"},
        413,
        "inflates (gzip)",
    ),
    (
        "bad gzip",
        "POST",
        "/v2/models/mlp/infer",
        b"not gzip at all",
        {"Content-Encoding": "gzip"},
        400,
        "not valid gzip data",
    ),
    (
        "encoding",
        "POST",
        "/v2/models/mlp/infer",
        _json([_ONE]),
        {"Content-Encoding": "br"},
        415,
        "Content-Encoding 'br' is not supported",
    ),
    (
        "malformed json",
        "POST",
        "/v2/models/mlp/infer",
        b'{"inputs": [',
        {},
        400,
        "request JSON is malformed",
    ),
    ("not an object", "POST", "/v2/models/mlp/infer", b"[1, 2]", {}, 400, "must be a JSON object"),
    (
        "nan",
        "POST",
        "/v2/models/mlp/infer",
        b'{"inputs":[{"name":"features","shape":[1,1],"datatype":"FP32","data":[NaN]}]}',
        {},
        400,
        "NaN",
    ),
    (
        "too large for fp16",
        "POST",
        "/v2/models/half/infer",
        _json([{"name": "x", "shape": [1, 4], "datatype": "FP16", "data": [1e6, 0, 0, 0]}]),
        {},
        400,
        "input 'x' has a value that is not finite as FP16",
    ),
    (
        "unknown output",
        "POST",
        "/v2/models/mlp/infer",
        _json([_ONE], outputs=[{"name": "probs"}]),
        {},
        400,
        "unexpected requested output 'probs'",
    ),
    (
        "priority type",
        "POST",
        "/v2/models/mlp/infer",
        _json([_ONE], parameters={"priority": "high"}),
        {},
        400,
        "request parameter 'priority' must be a non-negative integer",
    ),
    ("wrong method", "GET", "/v2/models/mlp/infer", b"", {}, 405, "takes POST, not GET"),
    (
        "unknown route",
        "GET",
        "/v2/models/mlp/explain",
        b"",
        {},
        404,
        "no route for /v2/models/mlp/explain",
    ),
    ("outside v2", "GET", "/metrics", b"", {}, 404, "the API lives under /v2"),
    ("repository json", "POST", "/v2/repository/index", b"{nope", {}, 400, "malformed"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_the_protocol_error_naming_the_problem(
    server: BackgroundServer,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    got, payload, response_headers = raw(server, method, path, body or None, headers)
    assert got == status, payload[:300]
    assert response_headers["content-type"] == "application/json"
    error = json.loads(payload)["error"]
    assert fragment in error
    # and the server keeps serving
    ok, payload, _ = raw(server, "POST", "/v2/models/mlp/infer", _json([_ONE]))
    assert ok == 200 and json.loads(payload)["outputs"][0]["shape"] == [1, 10]


def test_response_compression_when_asked(server: BackgroundServer) -> None:
    body = _json([{**_ONE, "shape": [8, 784], "data": [0.5] * 8 * 784}])  # > 1 KiB answer
    status, payload, headers = raw(
        server, "POST", "/v2/models/mlp/infer", body, {"Accept-Encoding": "gzip"}
    )
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(payload))["model_name"] == "mlp"
    status, payload, headers = raw(
        server, "POST", "/v2/models/mlp/infer", zlib.compress(body), {"Content-Encoding": "deflate"}
    )
    assert status == 200 and "content-encoding" not in headers


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_have_tritons_names_and_agree_with_statistics(
    server: BackgroundServer, client: httpclient.InferenceServerClient
) -> None:
    client.infer("mlp", [infer_input("features", features(4), "FP32")])
    conn = http.client.HTTPConnection(server.metrics_url.split("/")[2], timeout=30)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/plain; version=0.0.4")
    entry = stats(client, "mlp")
    assert list(text_string_to_metric_families(text))  # valid Prometheus text
    # Triton's exact names: prometheus_client's parser would rename counters to *_total
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and not line.startswith("#"):
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")))
            samples[(match.group(1), labels)] = float(match.group(3))
    mlp = (("model", "mlp"), ("version", "1"))
    assert (
        samples[("nv_inference_request_success", mlp)]
        == entry["inference_stats"]["success"]["count"]
    )
    assert samples[("nv_inference_count", mlp)] == entry["inference_count"]
    assert samples[("nv_inference_exec_count", mlp)] == entry["execution_count"]
    assert samples[("nv_inference_pending_request_count", mlp)] == 0
    success_us = entry["inference_stats"]["success"]["ns"] // 1000
    assert samples[("nv_inference_request_duration_us", mlp)] == success_us
    queue_us = entry["inference_stats"]["queue"]["ns"] // 1000
    assert samples[("nv_inference_queue_duration_us", mlp)] == queue_us
    assert ("nv_inference_compute_infer_duration_us", mlp) in samples
    rejected = (("model", "mlp"), ("reason", "REJECTED"), ("version", "1"))
    assert samples[("nv_inference_request_failure", rejected)] >= 0
    assert samples[("nv_cpu_memory_total_bytes", ())] > 0
    assert 0 <= samples[("nv_cpu_utilization", ())] <= 1
    assert "process_resident_memory_bytes" in text
    assert "# TYPE nv_inference_request_success counter" in text  # Triton's name, no _total


def test_logs_show_batch_sizes_while_traffic_flows(caplog: pytest.LogCaptureFixture) -> None:
    config = ServerConfig(http_port=0, grpc_port=None, metrics_port=None, stats_log_interval_s=0.1)
    with (
        caplog.at_level(logging.INFO, logger=LOGGER_NAME),
        BackgroundServer(open_repository("zoo:mlp"), config) as background,
    ):
        c = httpclient.InferenceServerClient(background.http_url)
        for _ in range(3):
            c.infer("mlp", [infer_input("features", features(2), "FP32")])
        c.close()
        # bounded: the summary of all three comes within a few intervals (a slow machine may
        # log one between requests too)
        for _ in range(100):
            summaries = [r for r in caplog.records if r.getMessage() == "batch_stats"]
            if summaries and json.loads(JsonFormatter().format(summaries[-1]))["requests"] == 3:
                break
            time.sleep(0.05)
    del c
    gc.collect()
    events = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    summary = [e for e in events if e["event"] == "batch_stats"][-1]
    assert summary["model"] == "mlp" and summary["executions_by_batch_size"] == {"2": 3}
    assert summary["requests"] == 3
    assert [e["event"] for e in events][-1] == "server_stopped"
