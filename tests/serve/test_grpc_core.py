"""The core gRPC engine's own paths: unknown methods, the fallback, a held call cut off by stop
or by the drain's abort, a client that gives up on a call still computing."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from crossinfer.serve import grpc_core
from crossinfer.serve.repository import ModelRepository, ModelSource
from crossinfer.serve.server import BackgroundServer, ServerConfig

LIMIT_S = 30.0
SERVICE = "/inference.GRPCInferenceService/"


def infer_request() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 784])
    request.raw_input_contents.append(np.ones((1, 784), np.float32).tobytes())
    return request.SerializeToString()


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    repository = ModelRepository(None, models={"mlp": ModelSource("zoo:mlp")})
    config = ServerConfig(http_port=None, grpc_port=0, metrics_port=None, grpc_engine="core")
    with BackgroundServer(repository, config) as running:
        assert running.server._grpc.engine == "core"
        yield running


def unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        SERVICE + method,
        request_serializer=None,
        response_deserializer=service_pb2.ModelInferResponse.FromString,
    )


def test_an_unknown_method_is_unimplemented_naming_it(server: BackgroundServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchCall")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=LIMIT_S)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "NoSuchCall" in info.value.details()


def test_a_client_that_gives_up_leaves_the_server_answering(server: BackgroundServer) -> None:
    batcher = server.server.repository.get("mlp").batcher
    server.call_soon(lambda: batcher.hold_until(2))  # the request waits for one never sent
    try:
        with grpc.insecure_channel(server.grpc_url) as channel:
            with pytest.raises(grpc.RpcError) as info:
                unary(channel, "ModelInfer")(infer_request(), timeout=0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        server.call_soon(batcher.release)
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = unary(channel, "ModelInfer")(infer_request(), timeout=LIMIT_S)
    assert reply.model_name == "mlp" and len(reply.raw_output_contents) == 1


@contextlib.contextmanager
def held_call() -> Iterator[tuple[BackgroundServer, threading.Thread, list[grpc.RpcError]]]:
    """A core-engine server with one ModelInfer call in flight, held in the batcher; the client
    thread's errors land in the list. The batcher is released before the server stops."""
    repository = ModelRepository(None, models={"mlp": ModelSource("zoo:mlp")})
    config = ServerConfig(http_port=None, grpc_port=0, metrics_port=None, grpc_engine="core")
    with BackgroundServer(repository, config) as running:
        batcher = repository.get("mlp").batcher
        running.call_soon(lambda: batcher.hold_until(2))
        errors: list[grpc.RpcError] = []

        def call() -> None:
            with grpc.insecure_channel(running.grpc_url) as channel:
                try:
                    unary(channel, "ModelInfer")(infer_request(), timeout=LIMIT_S)
                except grpc.RpcError as exc:
                    errors.append(exc)

        client = threading.Thread(target=call)
        client.start()
        service = running.server._grpc._service
        deadline = time.monotonic() + LIMIT_S
        while not service._in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            yield running, client, errors
        finally:
            running.call_soon(batcher.release)


def test_the_drain_abort_answers_a_held_call_with_its_reason() -> None:
    with held_call() as (running, client, errors):
        grpc_server = running.server._grpc
        assert running.call(_abort(grpc_server, "the drain ran out: retry elsewhere")) == 1
        client.join(LIMIT_S)
        started = time.monotonic()
        running.call(grpc_server.stop(0.5))
        assert time.monotonic() - started < 5  # stopped, nothing left waiting
    assert len(errors) == 1
    assert errors[0].code() == grpc.StatusCode.UNAVAILABLE
    assert errors[0].details() == "the drain ran out: retry elsewhere"


async def _abort(server: grpc_core.CoreGrpcServer, reason: str) -> int:
    return server.abort_in_flight(reason)


def test_stop_cancels_a_call_still_held_after_the_grace() -> None:
    with held_call() as (running, client, errors):
        started = time.monotonic()
        running.call(running.server._grpc.stop(0.5))
        assert time.monotonic() - started < 5
        client.join(LIMIT_S)
    assert len(errors) == 1
    assert errors[0].code() == grpc.StatusCode.UNAVAILABLE  # as grpc.aio: "Cancelling all calls"


def test_a_grpcio_without_the_core_pieces_falls_back_to_aio(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(grpc_core, "_MISSING", ["CompletionQueue"])
    assert "lacks CompletionQueue" in (grpc_core.available() or "")
    repository = ModelRepository(None, models={"mlp": ModelSource("zoo:mlp")})
    config = ServerConfig(http_port=None, grpc_port=0, metrics_port=None, grpc_engine="core")
    with caplog.at_level(logging.WARNING), BackgroundServer(repository, config) as running:
        assert running.server._grpc.engine == "aio"
        with grpc.insecure_channel(running.grpc_url) as channel:
            reply = unary(channel, "ModelInfer")(infer_request(), timeout=LIMIT_S)
        assert len(reply.raw_output_contents) == 1
    assert "core engine cannot run here" in caplog.text


def test_an_unknown_engine_is_refused() -> None:
    repository = ModelRepository(None, models={})
    config = ServerConfig(http_port=None, grpc_port=0, metrics_port=None, grpc_engine="fast")
    with (
        pytest.raises(ValueError, match="unknown gRPC engine 'fast'"),
        BackgroundServer(repository, config),
    ):
        pass
