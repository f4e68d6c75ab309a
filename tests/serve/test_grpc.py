"""The gRPC front end, driven by unmodified tritonclient.grpc (sync, aio, stream) on 127.0.0.1.

Every answer is compared with in-process inference on the same ONNX Runtime model.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf import descriptor_pool
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from crossinfer.backends.base import get_backend
from crossinfer.model import load_model
from crossinfer.serve import grpc_messages
from crossinfer.serve.grpc import GRPC_ENGINES, start_grpc_server
from crossinfer.serve.repository import ModelRepository, ModelSource

LIMIT_S = 30.0
START_LIMIT_S = 180.0  # the start builds zoo:digits (sklearn training): 44 s at load 12 here


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerThread:
    """The gRPC server on its own event loop in a thread, as `crossinfer serve` runs it."""

    def __init__(
        self,
        repository: ModelRepository,
        max_message_bytes: int | None = None,
        engine: str = "core",
    ) -> None:
        self.repository = repository
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        kwargs: dict[str, Any] = {"engine": engine}
        if max_message_bytes is not None:
            kwargs["max_message_bytes"] = max_message_bytes
        self.server = self.call(self._start(kwargs), START_LIMIT_S)

    async def _start(self, kwargs: dict[str, Any]) -> Any:
        await self.repository.start()
        return await start_grpc_server(self.repository, "127.0.0.1", self.port, **kwargs)

    def call(self, coro: Any, limit_s: float = LIMIT_S) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(limit_s)

    def close(self) -> None:
        self.call(self.server.stop(1.0))
        self.call(self.repository.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(LIMIT_S)
        self._loop.close()


def fp16_model() -> onnx.ModelProto:
    """y = 2x in FP16 with a symbolic batch."""
    two = numpy_helper.from_array(np.array(2, np.float16), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 4])],
        [two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def bytes_model() -> onnx.ModelProto:
    """echo = text, a STRING tensor (BYTES in v2)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    onnx.save(fp16_model(), root / "double16.onnx")
    onnx.save(bytes_model(), root / "echo.onnx")
    return root


@pytest.fixture(scope="module", params=GRPC_ENGINES)
def server(model_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """Every test below runs against both engines (grpc's core driven directly, and grpc.aio)."""
    zoo = {name: ModelSource(f"zoo:{name}") for name in ("mlp", "digits")}
    # explicit: test_repository_index_unload_load loads and unloads as a client
    repo = ModelRepository(model_dir, models=zoo, control_mode="explicit")
    thread = ServerThread(repo, engine=request.param)
    assert thread.server.engine == request.param  # no silent fallback here
    yield thread
    thread.close()


@pytest.fixture
def client(server: ServerThread) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.url) as c:
        yield c


def reference(source: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = get_backend("onnxruntime").prepare(load_model(source), "cpu")
    try:
        return session.run(feeds)
    finally:
        session.close()


def infer_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


# --------------------------------------------------------------------------- the schema


def _assert_same_fields(mine: Any, theirs: Any, path: str) -> int:
    checked = 0
    for field in mine.fields:
        other = theirs.fields_by_name.get(field.name)
        assert other is not None, f"{path}.{field.name} is not in Triton's proto"
        assert (field.number, field.type, field.is_repeated) == (
            other.number,
            other.type,
            other.is_repeated,
        ), f"{path}.{field.name}"
        if field.message_type is not None:
            assert field.message_type.full_name == other.message_type.full_name, path
        if field.enum_type is not None:
            assert [(v.name, v.number) for v in field.enum_type.values] == [
                (v.name, v.number) for v in other.enum_type.values
            ], f"{path}.{field.name}"
        mine_oneof = field.containing_oneof.name if field.containing_oneof else None
        their_oneof = other.containing_oneof.name if other.containing_oneof else None
        assert mine_oneof == their_oneof, f"{path}.{field.name}"
        checked += 1
    for nested in mine.nested_types:
        checked += _assert_same_fields(
            nested, theirs.nested_types_by_name[nested.name], f"{path}.{nested.name}"
        )
    return checked


def test_our_messages_match_tritons_field_for_field() -> None:
    pool = descriptor_pool.Default()  # holds tritonclient's generated grpc_service.proto
    checked = 0
    for rpc in grpc_messages.RPCS:
        for name in (rpc.request, rpc.response):
            theirs = pool.FindMessageTypeByName(f"inference.{name}")
            checked += _assert_same_fields(
                grpc_messages.message_class(name).DESCRIPTOR, theirs, name
            )
        method = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name[
            rpc.name
        ]
        assert method.input_type.name == rpc.request
        assert method.output_type.name == rpc.response
    checked += _assert_same_fields(
        grpc_messages.message_class("ModelConfig").DESCRIPTOR,
        model_config_pb2.ModelConfig.DESCRIPTOR,
        "ModelConfig",
    )
    assert checked > 100


# --------------------------------------------------------------------------- health, metadata


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert not client.is_model_ready("no-such-model")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "crossinfer"
    assert "model_repository" in meta["extensions"]
    model = client.get_model_metadata("mlp", as_json=True)
    assert model["name"] == "mlp"
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "784"]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]


def test_model_config_is_the_http_config(
    server: ServerThread, client: grpcclient.InferenceServerClient
) -> None:
    config = client.get_model_config("mlp").config
    want = server.repository.get("mlp").config()
    assert config.name == "mlp"
    assert config.max_batch_size == want["max_batch_size"] > 0
    assert [(i.name, list(i.dims)) for i in config.input] == [("features", [784])]
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_FP32"
    assert [o.name for o in config.output] == ["logits"]
    assert config.HasField("dynamic_batching")
    assert not config.model_transaction_policy.decoupled


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize(
    ("model", "source", "input_name", "width"),
    [
        ("mlp", "zoo:mlp", "features", 784),
        ("digits", "zoo:digits", "pixels", 64),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_infer_matches_in_process(
    client: grpcclient.InferenceServerClient,
    model: str,
    source: str,
    input_name: str,
    width: int,
    batch: int,
) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, width)).astype(np.float32)
    result = client.infer(model, [infer_input(input_name, x, "FP32")], request_id="r-7")
    got = result.as_numpy("logits")
    assert got is not None and got.shape == (batch, 10) and got.dtype == np.float32
    np.testing.assert_allclose(
        got, reference(source, {input_name: x})["logits"], rtol=1e-5, atol=1e-5
    )
    response = result.get_response()
    assert response.id == "r-7"
    assert response.model_name == model
    assert len(response.raw_output_contents) == 1


def test_fp16_and_bytes_tensors(client: grpcclient.InferenceServerClient) -> None:
    x = np.array([[0.5, -1.25, 3.0, 65504 / 4]], dtype=np.float16)
    out = client.infer("double16", [infer_input("x", x, "FP16")]).as_numpy("y")
    assert out is not None and out.dtype == np.float16
    np.testing.assert_array_equal(out, x * 2)

    text = np.array([[b"hello", "gr\u00fc\u00df".encode()], [b"", b"x" * 300]], dtype=object)
    echoed = client.infer("echo", [infer_input("text", text, "BYTES")]).as_numpy("echo")
    assert echoed is not None and echoed.shape == (2, 2)
    assert [bytes(v) for v in echoed.ravel()] == list(text.ravel())


def test_requested_output_and_parameters(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 64), np.float32)
    result = client.infer(
        "digits",
        [infer_input("pixels", x, "FP32")],
        outputs=[grpcclient.InferRequestedOutput("logits")],
        priority=1,
        timeout=10_000_000,
    )
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference("zoo:digits", {"pixels": x})["logits"], rtol=1e-5
    )


def test_typed_contents_are_accepted(server: ServerThread) -> None:
    """Triton's other encoding, InferTensorContents, which tritonclient never sends."""
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(server.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=LIMIT_S
        )
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("logits", "FP32", [2, 10])
    ]
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, reference("zoo:digits", {"pixels": x})["logits"], rtol=1e-5)


def test_aio_client_concurrent_requests(server: ServerThread) -> None:
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1, 784)).astype(np.float32) for _ in range(8)]

    async def main() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(server.url) as c:
            assert await c.is_server_live()
            assert await c.is_model_ready("mlp")
            results = await asyncio.gather(
                *(c.infer("mlp", [infer_input("features", x, "FP32")]) for x in xs)
            )
            return [r.as_numpy("logits") for r in results]

    outs = asyncio.run(asyncio.wait_for(main(), LIMIT_S))
    want = reference("zoo:mlp", {"features": np.concatenate(xs)})["logits"]
    np.testing.assert_allclose(np.concatenate(outs), want, rtol=1e-5, atol=1e-5)


def test_stream_infer_answers_every_request(client: grpcclient.InferenceServerClient) -> None:
    answers: list[Any] = []
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        answers.append((result, error))
        if len(answers) == 4:
            done.set()

    x = np.ones((1, 64), np.float32)
    client.start_stream(callback=callback)
    try:
        for i in range(3):
            client.async_stream_infer(
                "digits", [infer_input("pixels", x, "FP32")], request_id=str(i)
            )
        client.async_stream_infer("no-such-model", [infer_input("pixels", x, "FP32")])
        assert done.wait(LIMIT_S)
    finally:
        client.stop_stream()
    errors = [e for _, e in answers if e is not None]
    results = [r for r, e in answers if e is None]
    assert len(errors) == 1 and "no-such-model" in str(errors[0])
    assert sorted(r.get_response().id for r in results) == ["0", "1", "2"]
    want = reference("zoo:digits", {"pixels": x})["logits"]
    for r in results:
        np.testing.assert_allclose(r.as_numpy("logits"), want, rtol=1e-5)


# --------------------------------------------------------------------------- errors


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 64), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", [infer_input("pixels", x, "FP32")])
    assert _status(info.value) == "StatusCode.NOT_FOUND"
    assert "no-such-model" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("no-such-model")
    assert _status(info.value) == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize(
    ("array", "datatype", "words"),
    [
        (np.ones((1, 63), np.float32), "FP32", ["pixels", "[-1,64]", "[1,63]"]),
        (np.ones((1, 64), np.float64), "FP64", ["pixels", "FP32", "FP64"]),
    ],
)
def test_wrong_input_is_invalid_argument_naming_the_tensor(
    client: grpcclient.InferenceServerClient, array: np.ndarray, datatype: str, words: list[str]
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits", [infer_input("pixels", array, datatype)])
    assert _status(info.value) == "StatusCode.INVALID_ARGUMENT"
    for word in words:
        assert word in info.value.message()
    # and the server still serves
    ok = client.infer("digits", [infer_input("pixels", np.ones((1, 64), np.float32), "FP32")])
    assert ok.as_numpy("logits") is not None


def test_raw_size_and_unknown_input_errors(server: ServerThread) -> None:
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(b"\0" * 12)
    unknown = service_pb2.ModelInferRequest(model_name="digits")
    unknown.inputs.add(name="pixel", datatype="FP32", shape=[1, 64])
    unknown.raw_input_contents.append(b"\0" * 256)
    with grpc.insecure_channel(server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=LIMIT_S)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'pixels' has 12 bytes in raw_input_contents" in info.value.details()
        assert "needs 256 bytes" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(unknown, timeout=LIMIT_S)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unexpected input 'pixel'" in info.value.details()


def test_message_size_limit_is_enforced(model_dir: Path) -> None:
    small = ServerThread(
        ModelRepository(None, models={"mlp": ModelSource("zoo:mlp")}), max_message_bytes=1024
    )
    try:
        with grpcclient.InferenceServerClient(small.url) as c:
            with pytest.raises(InferenceServerException) as info:
                c.infer("mlp", [infer_input("features", np.ones((1, 784), np.float32), "FP32")])
            assert _status(info.value) == "StatusCode.RESOURCE_EXHAUSTED"
            assert c.is_server_live()
    finally:
        small.close()


# --------------------------------------------------------------------------- stats, repository


def test_statistics_count_inferences(client: grpcclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    x = np.ones((2, 64), np.float32)
    for _ in range(3):
        client.infer("digits", [infer_input("pixels", x, "FP32")])
    stats = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert stats["name"] == "digits"
    assert int(stats["inference_count"]) == int(before.get("inference_count", 0)) + 6
    success = stats["inference_stats"]["success"]
    assert int(success["count"]) == int(before["inference_stats"]["success"].get("count", 0)) + 3
    assert int(success["ns"]) > 0
    assert any(int(b["batch_size"]) == 2 for b in stats["batch_stats"])
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {"mlp", "digits"} <= {s["name"] for s in everything}


def test_repository_index_unload_load(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} >= {"mlp", "digits", "double16", "echo"}
    assert all(m["state"] == "READY" for m in index)
    client.unload_model("double16")
    try:
        assert not client.is_model_ready("double16")
        states = {
            m["name"]: m["state"] for m in client.get_model_repository_index(as_json=True)["models"]
        }
        assert states["double16"] == "UNAVAILABLE"
        with pytest.raises(InferenceServerException) as info:
            client.infer("double16", [infer_input("x", np.ones((1, 4), np.float16), "FP16")])
        assert _status(info.value) in ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND")
    finally:
        client.load_model("double16")
    assert client.is_model_ready("double16")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("no-such-model")
    assert _status(info.value) == "StatusCode.NOT_FOUND"
