"""Triton's system and CUDA shared-memory extensions, through unmodified tritonclient on 127.0.0.1.

The client side is tritonclient's own `utils.shared_memory` (POSIX shm regions it creates and
unlinks); answers are compared with the same models run in-process. CUDA regions are exercised
through a fake IPC opener backed by host memory: the server-side logic is the same, only the copy
to and from the device is not.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import importlib
import importlib.resources
import os
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from serve_models import bytes_identity_model, model_dir, reference, two_output_model
from tritonclient.utils import (
    InferenceServerException,
    serialize_byte_tensor,
    serialized_byte_size,
)

from crossinfer.serve.protocol import ProtocolError
from crossinfer.serve.repository import ModelRepository
from crossinfer.serve.server import BackgroundServer, ServerConfig
from crossinfer.serve.shm import CUDA, CUDA_UNAVAILABLE, SYSTEM, SharedMemoryRegistry
from crossinfer.zoo import zoo_model_path


def _client_shared_memory() -> Any:
    """tritonclient's own ``utils.shared_memory``, unmodified.

    tritonclient 2.41 imports pkg_resources there, which setuptools >= 81 no longer ships; it only
    calls ``resource_filename`` (to find its libcshm.so), which importlib.resources answers.
    """
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, name: str) -> str:
            return str(importlib.resources.files(package) / name)

        shim.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    return importlib.import_module("tritonclient.utils.shared_memory")


shm = _client_shared_memory()
ROWS = 3
FEATURES_BYTES = ROWS * 784 * 4
LOGITS_BYTES = ROWS * 10 * 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("repository")
    model_dir(root, "mlp", zoo_model_path("zoo:mlp"), "max_batch_size = 8\nthreads = 1\n")
    model_dir(root, "two", two_output_model())
    model_dir(root, "text", bytes_identity_model())
    config = ServerConfig(http_port=0, grpc_port=0, metrics_port=None)
    with BackgroundServer(ModelRepository(root), config) as background:
        yield background


@pytest.fixture(scope="module")
def http(server: BackgroundServer) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()
    del c
    gc.collect()  # the client's gevent pool must be collected on the main thread


@pytest.fixture(scope="module")
def grpc_client(server: BackgroundServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


@pytest.fixture(autouse=True)
def clean_registry(server: BackgroundServer) -> Iterator[None]:
    yield
    server.call_soon(server.server.shared_memory.close)
    server.server.shared_memory.cuda_opener = None


class Regions:
    """Client-side regions made with tritonclient's shared_memory module, destroyed at the end."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.keys: list[str] = []

    def create(self, byte_size: int) -> tuple[str, Any]:
        key = f"/crossinfer-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key[1:], key, byte_size)
        self.handles.append(handle)
        self.keys.append(key)
        return key, handle

    def destroy(self) -> None:
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions() -> Iterator[Regions]:
    made = Regions()
    yield made
    made.destroy()
    for key in made.keys:  # the client unlinked them; the server unlinked nothing else
        assert not os.path.exists(f"/dev/shm{key}")


def features(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 784), dtype=np.float32)


# --------------------------------------------------------------------------- HTTP


def test_http_input_and_output_in_system_shared_memory(
    http: httpclient.InferenceServerClient, regions: Regions
) -> None:
    x = features()
    in_key, in_handle = regions.create(FEATURES_BYTES)
    out_key, out_handle = regions.create(LOGITS_BYTES)
    shm.set_shared_memory_region(in_handle, [x])
    http.register_system_shared_memory("in", in_key, FEATURES_BYTES)
    http.register_system_shared_memory("out", out_key, LOGITS_BYTES)
    assert http.get_system_shared_memory_status() == [
        {"name": "in", "key": in_key, "offset": 0, "byte_size": FEATURES_BYTES},
        {"name": "out", "key": out_key, "offset": 0, "byte_size": LOGITS_BYTES},
    ]
    assert http.get_system_shared_memory_status("out") == [
        {"name": "out", "key": out_key, "offset": 0, "byte_size": LOGITS_BYTES}
    ]

    tensor = httpclient.InferInput("features", [ROWS, 784], "FP32")
    tensor.set_shared_memory("in", FEATURES_BYTES)
    wanted = httpclient.InferRequestedOutput("logits", binary_data=True)
    wanted.set_shared_memory("out", LOGITS_BYTES)
    result = http.infer("mlp", [tensor], outputs=[wanted])

    # as Triton answers: no data, and no parameters (perf_analyzer's C++ client would read
    # them as binary_data_size)
    assert result.get_output("logits") == {
        "name": "logits",
        "datatype": "FP32",
        "shape": [ROWS, 10],
    }
    got = shm.get_contents_as_numpy(out_handle, np.float32, [ROWS, 10])
    want = reference("zoo:mlp", {"features": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    http.unregister_system_shared_memory("in")
    assert [r["name"] for r in http.get_system_shared_memory_status()] == ["out"]
    http.unregister_system_shared_memory()
    assert http.get_system_shared_memory_status() == []
    http.unregister_system_shared_memory("never-registered")  # idempotent, as in Triton


def test_http_offsets_within_one_region_and_mixed_outputs(
    http: httpclient.InferenceServerClient, regions: Regions
) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 0.5, np.float32)
    key, handle = regions.create(4096)
    shm.set_shared_memory_region(handle, [a], offset=100)
    shm.set_shared_memory_region(handle, [b], offset=200)
    # the region itself starts 64 bytes into the object: offsets below are the region's
    http.register_system_shared_memory("pool", key, 4000, offset=64)
    ta = httpclient.InferInput("a", [2, 3], "FP32")
    ta.set_shared_memory("pool", 24, offset=100 - 64)
    tb = httpclient.InferInput("b", [2, 3], "FP32")
    tb.set_shared_memory("pool", 24, offset=200 - 64)
    doubled = httpclient.InferRequestedOutput("doubled")
    doubled.set_shared_memory("pool", 64, offset=1000)  # more room than needed is fine
    summed = httpclient.InferRequestedOutput("summed", binary_data=False)
    result = http.infer("two", [ta, tb], outputs=[doubled, summed])

    assert result.get_output("doubled") == {"name": "doubled", "datatype": "FP32", "shape": [2, 3]}
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.float32, [2, 3], offset=1064), a * 2
    )
    np.testing.assert_array_equal(result.as_numpy("summed"), a + b)
    # the inputs' bytes were not touched
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.float32, [2, 3], offset=100), a
    )


def test_http_bytes_tensor_in_shared_memory(
    http: httpclient.InferenceServerClient, regions: Regions
) -> None:
    text = np.array([[b"shared", b""], [b"memory", "ünïcode".encode()]], dtype=object)
    raw = serialize_byte_tensor(text)
    size = serialized_byte_size(raw)
    key, handle = regions.create(1024)
    shm.set_shared_memory_region(handle, [raw])
    http.register_system_shared_memory("text", key, 1024)
    tensor = httpclient.InferInput("text", [2, 2], "BYTES")
    tensor.set_shared_memory("text", size)
    out = httpclient.InferRequestedOutput("same")
    out.set_shared_memory("text", 512, offset=512)
    result = http.infer("text", [tensor], outputs=[out])
    assert result.get_output("same")["shape"] == [2, 2]
    got = shm.get_contents_as_numpy(handle, np.object_, [2, 2], offset=512)
    assert got.tolist() == text.tolist()


def _error(http: httpclient.InferenceServerClient, inputs: list[Any], outputs: Any = None) -> str:
    with pytest.raises(InferenceServerException) as info:
        http.infer("mlp", inputs, outputs=outputs)
    return str(info.value)


def test_http_errors_name_the_region_and_the_fix(
    http: httpclient.InferenceServerClient, regions: Regions, server: BackgroundServer
) -> None:
    key, handle = regions.create(FEATURES_BYTES)
    shm.set_shared_memory_region(handle, [features()])
    http.register_system_shared_memory("in", key, FEATURES_BYTES)

    def tensor(region: str, size: int, offset: int = 0) -> httpclient.InferInput:
        # a fresh one each time: tritonclient leaves an earlier non-zero offset in place
        made = httpclient.InferInput("features", [ROWS, 784], "FP32")
        return made.set_shared_memory(region, size, offset)

    message = _error(http, [tensor("nope", FEATURES_BYTES)])
    assert "shared memory region 'nope', which is not registered (registered: 'in')" in message

    message = _error(http, [tensor("in", FEATURES_BYTES, offset=4)])
    assert f"uses bytes [4, {FEATURES_BYTES + 4}) of shared memory region 'in'" in message
    assert f"holds only {FEATURES_BYTES} bytes" in message

    message = _error(http, [tensor("in", FEATURES_BYTES - 4)])
    assert f"shared_memory_byte_size {FEATURES_BYTES - 4} but FP32 [3,784] needs" in message

    small = httpclient.InferRequestedOutput("logits")
    small.set_shared_memory("in", 8)
    message = _error(http, [tensor("in", FEATURES_BYTES)], [small])
    assert f"for output 'logits' (8 bytes) should be at least {LOGITS_BYTES} bytes" in message

    with pytest.raises(InferenceServerException, match="no shared memory object with key"):
        http.register_system_shared_memory("ghost", "/crossinfer-no-such-key", 16)
    with pytest.raises(InferenceServerException, match="is not a POSIX shared memory name"):
        http.register_system_shared_memory("escape", "/../etc/passwd", 16)
    with pytest.raises(InferenceServerException, match=r"is beyond the end of key"):
        http.register_system_shared_memory("big", key, FEATURES_BYTES, offset=1)
    with pytest.raises(InferenceServerException, match="'in' is already registered"):
        http.register_system_shared_memory("in", key, 16)
    with pytest.raises(InferenceServerException, match="byte_size must be an integer >= 1"):
        http.register_system_shared_memory("zero", key, 0)
    with pytest.raises(InferenceServerException, match="no system shared memory region named"):
        http.get_system_shared_memory_status("nope")

    # the failures above were counted as rejected, and the region still works
    result = http.infer("mlp", [tensor("in", FEATURES_BYTES)])
    want = reference("zoo:mlp", {"features": features()})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)


def test_raw_http_parameter_checks(server: BackgroundServer, regions: Regions) -> None:
    import http.client
    import json

    key, _ = regions.create(64)
    server.call_soon(
        lambda: server.server.shared_memory.register_system("r", key, offset=0, byte_size=64)
    )

    def post(doc: dict[str, Any]) -> tuple[int, str]:
        conn = http.client.HTTPConnection(server.http_url, timeout=30)
        try:
            conn.request("POST", "/v2/models/two/infer", body=json.dumps(doc))
            response = conn.getresponse()
            return response.status, json.loads(response.read()).get("error", "")
        finally:
            conn.close()

    def a_input(params: dict[str, Any], data: bool = False) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": "a",
            "shape": [1, 3],
            "datatype": "FP32",
            "parameters": params,
        }
        if data:
            entry["data"] = [1, 2, 3]
        return entry

    b = {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    status, error = post({"inputs": [a_input({"shared_memory_region": "r"}), b]})
    assert status == 400 and "without 'shared_memory_byte_size'" in error
    status, error = post({"inputs": [a_input({"shared_memory_byte_size": 12}), b]})
    assert status == 400 and "no 'shared_memory_region'" in error
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 12}
    status, error = post({"inputs": [a_input(params, data=True), b]})
    assert status == 400 and "send it one way" in error
    status, error = post({"inputs": [a_input({**params, "shared_memory_offset": -4}), b]})
    assert status == 400 and "'shared_memory_offset' must be a non-negative integer" in error
    status, _ = post({"inputs": [a_input(params), b]})
    assert status == 200


def test_unregister_mid_request_keeps_the_mapping_until_the_request_is_done(
    http: httpclient.InferenceServerClient, regions: Regions, server: BackgroundServer
) -> None:
    x = features(seed=3)
    in_key, in_handle = regions.create(FEATURES_BYTES)
    out_key, out_handle = regions.create(LOGITS_BYTES)
    shm.set_shared_memory_region(in_handle, [x])
    # two regions: each request side must hold its own (the output's is only written at the end)
    http.register_system_shared_memory("in", in_key, FEATURES_BYTES)
    http.register_system_shared_memory("out", out_key, LOGITS_BYTES)
    model = server.server.repository.get("mlp")
    server.call_soon(lambda: model.batcher.hold_until(1000))
    results: list[Any] = []

    def send() -> None:
        with httpclient.InferenceServerClient(server.http_url) as c:
            tensor = httpclient.InferInput("features", [ROWS, 784], "FP32")
            tensor.set_shared_memory("in", FEATURES_BYTES)
            out = httpclient.InferRequestedOutput("logits")
            out.set_shared_memory("out", LOGITS_BYTES)
            results.append(c.infer("mlp", [tensor], outputs=[out]))

    thread = threading.Thread(target=send)
    thread.start()
    try:
        for _ in range(1000):
            if server.call_soon(lambda: model.batcher.stats().pending) == 1:
                break
            threading.Event().wait(0.01)
        http.unregister_system_shared_memory()  # while the request waits in the queue
        assert http.get_system_shared_memory_status() == []
    finally:
        server.call_soon(model.batcher.release)
        thread.join(30)
    assert len(results) == 1
    got = shm.get_contents_as_numpy(out_handle, np.float32, [ROWS, 10])
    want = reference("zoo:mlp", {"features": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_server_metadata_lists_both_extensions(http: httpclient.InferenceServerClient) -> None:
    extensions = http.get_server_metadata()["extensions"]
    assert "system_shared_memory" in extensions and "cuda_shared_memory" in extensions


# --------------------------------------------------------------------------- gRPC


def test_grpc_input_and_output_in_system_shared_memory(
    grpc_client: grpcclient.InferenceServerClient, regions: Regions
) -> None:
    x = features(seed=1)
    in_key, in_handle = regions.create(FEATURES_BYTES)
    out_key, out_handle = regions.create(LOGITS_BYTES)
    shm.set_shared_memory_region(in_handle, [x])
    grpc_client.register_system_shared_memory("in", in_key, FEATURES_BYTES)
    grpc_client.register_system_shared_memory("out", out_key, LOGITS_BYTES)
    status = grpc_client.get_system_shared_memory_status(as_json=True)
    assert status["regions"]["in"] == {
        "name": "in",
        "key": in_key,
        "byte_size": str(FEATURES_BYTES),
    }
    assert set(status["regions"]) == {"in", "out"}

    tensor = grpcclient.InferInput("features", [ROWS, 784], "FP32")
    tensor.set_shared_memory("in", FEATURES_BYTES)
    wanted = grpcclient.InferRequestedOutput("logits")
    wanted.set_shared_memory("out", LOGITS_BYTES)
    result = grpc_client.infer("mlp", [tensor], outputs=[wanted])
    output = result.get_output("logits")
    assert list(output.shape) == [ROWS, 10]
    assert (output.datatype, len(output.parameters)) == ("FP32", 0)
    assert result.get_response().raw_output_contents == [b""]  # one (empty) entry per output
    got = shm.get_contents_as_numpy(out_handle, np.float32, [ROWS, 10])
    want = reference("zoo:mlp", {"features": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    grpc_client.unregister_system_shared_memory("in")
    assert set(grpc_client.get_system_shared_memory_status(as_json=True)["regions"]) == {"out"}
    grpc_client.unregister_system_shared_memory()
    assert grpc_client.get_system_shared_memory_status(as_json=True) == {}


def test_grpc_mixes_raw_and_shared_memory_tensors(
    grpc_client: grpcclient.InferenceServerClient, regions: Regions
) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    key, handle = regions.create(256)
    shm.set_shared_memory_region(handle, [b], offset=32)
    grpc_client.register_system_shared_memory("r", key, 256)
    ta = grpcclient.InferInput("a", [2, 3], "FP32")
    ta.set_data_from_numpy(a)  # raw_input_contents holds only this one
    tb = grpcclient.InferInput("b", [2, 3], "FP32")
    tb.set_shared_memory("r", 24, offset=32)
    doubled = grpcclient.InferRequestedOutput("doubled")
    doubled.set_shared_memory("r", 24, offset=128)
    summed = grpcclient.InferRequestedOutput("summed")
    result = grpc_client.infer("two", [ta, tb], outputs=[doubled, summed])
    # an empty raw entry stands for the output in shared memory: the next one reads right
    np.testing.assert_array_equal(result.as_numpy("summed"), a + b)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.float32, [2, 3], offset=128), a * 2
    )


def test_grpc_stream_reads_and_writes_shared_memory(
    server: BackgroundServer, regions: Regions
) -> None:
    import queue

    x = features(seed=2)
    key, handle = regions.create(FEATURES_BYTES + LOGITS_BYTES)
    shm.set_shared_memory_region(handle, [x])
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        c.register_system_shared_memory("s", key, FEATURES_BYTES + LOGITS_BYTES)
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        tensor = grpcclient.InferInput("features", [ROWS, 784], "FP32")
        tensor.set_shared_memory("s", FEATURES_BYTES)
        out = grpcclient.InferRequestedOutput("logits")
        out.set_shared_memory("s", LOGITS_BYTES, offset=FEATURES_BYTES)
        c.async_stream_infer("mlp", [tensor], outputs=[out])
        bad = grpcclient.InferInput("features", [ROWS, 784], "FP32")
        bad.set_shared_memory("missing", FEATURES_BYTES)
        c.async_stream_infer("mlp", [bad])
        got = [answers.get(timeout=30) for _ in range(2)]
        c.stop_stream()
    errors = [str(e) for _, e in got if e is not None]
    assert len(errors) == 1 and "'missing', which is not registered" in errors[0]
    logits = shm.get_contents_as_numpy(handle, np.float32, [ROWS, 10], offset=FEATURES_BYTES)
    want = reference("zoo:mlp", {"features": x})["logits"]
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def test_grpc_errors_carry_codes(
    server: BackgroundServer, grpc_client: grpcclient.InferenceServerClient, regions: Regions
) -> None:
    key, _ = regions.create(64)
    grpc_client.register_system_shared_memory("r", key, 64)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.register_system_shared_memory("r", key, 64)
    assert info.value.status() == "StatusCode.ALREADY_EXISTS"
    with pytest.raises(InferenceServerException) as info:
        grpc_client.get_system_shared_memory_status("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    tensor = grpcclient.InferInput("features", [1, 784], "FP32")
    tensor.set_shared_memory("r", 784 * 4)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("mlp", [tensor])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "uses bytes [0, 3136) of shared memory region 'r', which holds only 64" in str(
        info.value
    )


# --------------------------------------------------------------------------- CUDA


def test_cuda_register_without_a_gpu_says_why(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA GPU: the refusal is for machines without one")
    except ImportError:
        pass
    handle = base64.b64encode(bytes(64))
    with pytest.raises(InferenceServerException, match=CUDA_UNAVAILABLE):
        http.register_cuda_shared_memory("gpu", handle, 0, 1024)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.register_cuda_shared_memory("gpu", handle, 0, 1024)
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert CUDA_UNAVAILABLE in str(info.value)
    assert http.get_cuda_shared_memory_status() == []


class FakeCudaMemory:
    """Host memory standing in for a client's CUDA allocation."""

    opened: ClassVar[list[tuple[bytes, int, int]]] = []

    def __init__(self, handle: bytes, device_id: int, byte_size: int) -> None:
        self.buffer = bytearray(byte_size)
        self.closed = False
        FakeCudaMemory.opened.append((handle, device_id, byte_size))
        FAKE_DEVICES[handle] = self

    def read(self, offset: int, size: int) -> bytes:
        assert not self.closed
        return bytes(self.buffer[offset : offset + size])

    def write(self, offset: int, data: bytes | memoryview) -> None:
        assert not self.closed
        self.buffer[offset : offset + len(data)] = data

    def close(self) -> None:
        self.closed = True


FAKE_DEVICES: dict[bytes, FakeCudaMemory] = {}


def test_cuda_shared_memory_through_a_fake_ipc_opener(
    server: BackgroundServer,
    http: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
) -> None:
    server.server.shared_memory.cuda_opener = FakeCudaMemory
    handle = bytes(range(64))
    http.register_cuda_shared_memory("gpu", base64.b64encode(handle), 1, 4096)
    assert FakeCudaMemory.opened[-1] == (handle, 1, 4096)
    assert http.get_cuda_shared_memory_status() == [
        {"name": "gpu", "device_id": 1, "byte_size": 4096}
    ]
    status = grpc_client.get_cuda_shared_memory_status(as_json=True)
    assert status["regions"]["gpu"] == {"name": "gpu", "device_id": "1", "byte_size": "4096"}
    # one namespace for both kinds, as in Triton
    with pytest.raises(InferenceServerException, match="already registered"):
        http.register_system_shared_memory("gpu", "/whatever", 16)

    memory = FAKE_DEVICES[handle]
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    memory.write(0, a.tobytes())
    ta = httpclient.InferInput("a", [2, 3], "FP32")
    ta.set_shared_memory("gpu", 24)
    tb = httpclient.InferInput("b", [2, 3], "FP32")
    tb.set_data_from_numpy(a)
    doubled = httpclient.InferRequestedOutput("doubled")
    doubled.set_shared_memory("gpu", 24, offset=1024)
    result = http.infer("two", [ta, tb], outputs=[doubled])
    assert "data" not in result.get_output("doubled")
    got = np.frombuffer(memory.read(1024, 24), np.float32).reshape(2, 3)
    np.testing.assert_array_equal(got, a * 2)

    # gRPC's register carries the raw bytes (tritonclient decodes its base64)
    grpc_client.register_cuda_shared_memory("gpu2", base64.b64encode(bytes(64)), 0, 64)
    assert FakeCudaMemory.opened[-1] == (bytes(64), 0, 64)
    grpc_client.unregister_cuda_shared_memory("gpu2")
    http.unregister_cuda_shared_memory()
    assert memory.closed
    assert http.get_cuda_shared_memory_status() == []
    with pytest.raises(InferenceServerException, match="raw_handle must be a 64-byte"):
        http.register_cuda_shared_memory("short", base64.b64encode(b"x" * 8), 0, 64)


# --------------------------------------------------------------------------- the registry alone


def test_registry_unit(tmp_path: Any) -> None:
    registry = SharedMemoryRegistry(cuda_opener=FakeCudaMemory)
    key = f"/crossinfer-unit-{uuid.uuid4().hex[:12]}"
    fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, 10000)
        os.pwrite(fd, b"0123456789", 5000)
        registry.register_system("r", key, offset=4999, byte_size=100)  # not page-aligned
        assert bytes(registry.input_data("x", "r", 1, 10)) == b"0123456789"
        slot = registry.output_slot("y", "r", 50, 8)
        assert slot.write(b"abc") == {
            "shared_memory_region": "r",
            "shared_memory_byte_size": 3,
            "shared_memory_offset": 50,
        }
        assert os.pread(fd, 3, 4999 + 50) == b"abc"
        with pytest.raises(ProtocolError, match="should be at least 9 bytes"):
            slot.write(b"x" * 9)
        # an output slot taken before unregistering still receives its output
        late = registry.output_slot("z", "r", 60, 4)
        registry.unregister(SYSTEM, "r")
        assert late.write(b"late")["shared_memory_region"] == "r"
        assert os.pread(fd, 4, 4999 + 60) == b"late"
        registry.register_system("r", key, offset=4999, byte_size=100)
        # an owner that shrinks its object must not crash the server (SIGBUS): refused instead
        os.ftruncate(fd, 4096)
        with pytest.raises(ProtocolError, match="was truncated by its owner"):
            registry.input_data("x", "r", 0, 4)

        asyncio.run(registry.register_cuda("c", bytes(64), device_id=0, byte_size=16))
        memory = FAKE_DEVICES[bytes(64)]
        pending = registry.output_slot("w", "c", 0, 8)  # an in-flight request's output
        dropped = registry.output_slot("v", "c", 8, 8)  # a request that fails before writing
        registry.unregister(CUDA, "c")
        assert not memory.closed  # still in use: the IPC mapping stays open
        pending.write(b"12345678")
        assert memory.read(0, 8) == b"12345678" and not memory.closed
        del dropped
        gc.collect()
        assert memory.closed  # closed once the last user let go
        asyncio.run(registry.register_cuda("c", bytes(64), device_id=0, byte_size=16))
        assert [r["name"] for r in registry.status(SYSTEM)] == ["r"]
        assert [r["name"] for r in registry.status(CUDA)] == ["c"]
        registry.unregister(CUDA)
        assert registry.status(CUDA) == [] and len(registry) == 1
        registry.close()
        assert len(registry) == 0
    finally:
        os.close(fd)
        os.unlink(f"/dev/shm{key}")


def test_keys_never_follow_symbolic_links(tmp_path: Any) -> None:
    """Anyone can plant a link in /dev/shm; following it would map the target read-write."""
    target = tmp_path / "secret"
    target.write_bytes(b"not for clients" * 10)
    link = f"crossinfer-link-{uuid.uuid4().hex[:12]}"
    os.symlink(target, f"/dev/shm/{link}")
    registry = SharedMemoryRegistry()
    try:
        with pytest.raises(ProtocolError, match=r"cannot register .* region 'evil': cannot open"):
            registry.register_system("evil", f"/{link}", offset=0, byte_size=16)
        assert len(registry) == 0
    finally:
        os.unlink(f"/dev/shm/{link}")
    folder = f"/dev/shm/crossinfer-dir-{uuid.uuid4().hex[:12]}"
    os.mkdir(folder)
    try:
        with pytest.raises(ProtocolError, match="cannot open key"):
            registry.register_system("dir", "/" + os.path.basename(folder), offset=0, byte_size=1)
    finally:
        os.rmdir(folder)


def test_objects_of_another_user_are_refused() -> None:
    key = f"/crossinfer-other-{uuid.uuid4().hex[:12]}"
    fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        os.ftruncate(fd, 64)
        other = os.geteuid() + 1
        if os.geteuid() != 0:
            pytest.skip("changing an object's owner needs root")
        os.fchown(fd, other, -1)
        registry = SharedMemoryRegistry()
        with pytest.raises(ProtocolError, match=f"belongs to uid {other}, not to the user"):
            registry.register_system("theirs", key, offset=0, byte_size=64)
        assert len(registry) == 0
    finally:
        os.close(fd)
        os.unlink(f"/dev/shm{key}")


def test_grpc_status_code_for_duplicates() -> None:
    from crossinfer.serve.grpc import grpc_code

    assert grpc_code(409) == grpc.StatusCode.ALREADY_EXISTS


def test_parser_without_a_registry_refuses_shared_memory_tensors() -> None:
    import json

    from crossinfer.model import TensorSpec
    from crossinfer.serve.protocol import parse_infer_request

    spec = [TensorSpec("x", "float32", ("batch", 2), 1)]
    doc = {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 2],
                "datatype": "FP32",
                "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 8},
            }
        ]
    }
    with pytest.raises(ProtocolError, match="input 'x' uses shared memory, which this server"):
        parse_infer_request(
            json.dumps(doc).encode(),
            header_length=None,
            content_encoding=None,
            inputs=spec,
            max_body_bytes=1 << 20,
        )


def test_grpc_raw_contents_count_excludes_shared_memory_inputs(
    grpc_client: grpcclient.InferenceServerClient, regions: Regions, server: BackgroundServer
) -> None:
    key, _ = regions.create(64)
    grpc_client.register_system_shared_memory("r", key, 64)
    request = grpcclient.service_pb2.ModelInferRequest(model_name="two")
    for name in ("a", "b"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[2, 3])
        if name == "b":
            tensor.parameters["shared_memory_region"].string_param = "r"
            tensor.parameters["shared_memory_byte_size"].int64_param = 24
    request.raw_input_contents.extend([bytes(24), bytes(24)])  # one too many: b is in the region
    channel = grpc.insecure_channel(server.grpc_url)
    try:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            infer(request, timeout=30)
    finally:
        channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 2 tensors but the request names 1 inputs outside shared memory" in str(
        info.value.details()
    )


def test_system_regions_are_page_locked_for_dma_and_released_on_unregister(
    regions: Regions,
) -> None:
    """Where the server computes on CUDA, a registered region is cudaHostRegister-ed (here a
    fake pinner records it), so a batch's rows go to the device by DMA; unregistering undoes it.
    A pinner that refuses leaves the region working."""
    calls: list[tuple[str, int, int]] = []

    def pin(address: int, size: int) -> Any:
        calls.append(("pin", address, size))
        return lambda: calls.append(("unpin", address, size))

    key, handle = regions.create(8192)
    shm.set_shared_memory_region(handle, [np.arange(4, dtype=np.float32)])
    registry = SharedMemoryRegistry(pin_host=pin)
    registry.register_system("r", key, offset=4096, byte_size=16)
    assert [c[0] for c in calls] == ["pin"] and calls[0][2] == 16  # the page at 4096, 16 bytes
    view = np.frombuffer(registry.input_data("x", "r", 0, 16), np.float32)
    assert view.ctypes.data == calls[0][1]  # the pinned address is where the rows are read
    registry.unregister(SYSTEM, "r")
    assert [c[0] for c in calls] == ["pin", "unpin"] and calls[1][1:] == calls[0][1:]
    del view
    refusing = SharedMemoryRegistry(pin_host=lambda address, size: None)
    refusing.register_system("r", key, offset=0, byte_size=16)
    np.testing.assert_array_equal(
        np.frombuffer(refusing.input_data("x", "r", 0, 16), np.float32), np.arange(4)
    )
    refusing.close()
