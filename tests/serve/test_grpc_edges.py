"""The gRPC front end at its edges: bad stream frames, garbage messages, huge echoed names.

Raw frames go through a plain grpc channel (bytes in, bytes out) so that what the server
receives is exactly what the test wrote; tritonclient could not send a broken frame.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from crossinfer.serve.grpc import MAX_DETAILS_CHARS
from crossinfer.serve.repository import ModelRepository, ModelSource
from crossinfer.serve.server import BackgroundServer, ServerConfig

LIMIT_S = 30.0
SERVICE = "/inference.GRPCInferenceService/"


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    repository = ModelRepository(None, models={"mlp": ModelSource("zoo:mlp")})
    config = ServerConfig(http_port=None, grpc_port=0, metrics_port=None)
    with BackgroundServer(repository, config) as running:
        yield running


@pytest.fixture
def channel(server: BackgroundServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_url) as ch:
        yield ch


def valid_frame(request_id: str) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="mlp", id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 784])
    request.raw_input_contents.append(np.ones((1, 784), np.float32).tobytes())
    return request.SerializeToString()


def stream(
    channel: grpc.Channel, frames: list[bytes]
) -> list[service_pb2.ModelStreamInferResponse]:
    call = channel.stream_stream(
        SERVICE + "ModelStreamInfer",
        request_serializer=None,  # the frames go out as the test wrote them
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )
    return list(call(iter(frames), timeout=LIMIT_S))


# a field-1 length-delimited header that promises more bytes than follow: never parses
GARBAGE = b"\x0a\xff\xff\xff\x0f\x01"


def test_a_bad_frame_gets_an_error_answer_and_the_stream_goes_on(channel: grpc.Channel) -> None:
    answers = stream(channel, [valid_frame("0"), GARBAGE, valid_frame("2")])
    errors = [a.error_message for a in answers if a.error_message]
    ids = sorted(a.infer_response.id for a in answers if not a.error_message)
    assert ids == ["0", "2"]  # the frames around the bad one were answered
    assert len(errors) == 1
    assert "not a valid ModelInferRequest message" in errors[0]


def test_unary_garbage_is_invalid_argument(channel: grpc.Channel) -> None:
    call = channel.unary_unary(SERVICE + "ModelInfer", request_serializer=None)
    with pytest.raises(grpc.RpcError) as info:
        call(GARBAGE, timeout=LIMIT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest message" in info.value.details()


def test_a_huge_model_name_is_cut_in_the_error_details(channel: grpc.Channel) -> None:
    # 100 KB echoed back whole would pass the client's metadata limit: RESOURCE_EXHAUSTED
    request = service_pb2.ModelInferRequest(model_name="m" * 100_000)
    call = channel.unary_unary(
        SERVICE + "ModelInfer", request_serializer=service_pb2.ModelInferRequest.SerializeToString
    )
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=LIMIT_S)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    details = info.value.details()
    assert len(details) <= MAX_DETAILS_CHARS
    assert "unknown model 'mmm" in details and "more characters)" in details


def _random_frame(rng: random.Random, i: int) -> tuple[bytes, bool]:
    """A frame and whether it is a valid request; broken ones are cut, flipped or random."""
    kind = rng.randrange(4)
    if kind == 0:
        return valid_frame(str(i)), True
    good = valid_frame(str(i))
    if kind == 1:
        return good[: rng.randrange(1, len(good))], False
    if kind == 2:
        flipped = bytearray(good)
        for _ in range(rng.randrange(1, 8)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped), False
    return rng.randbytes(rng.randrange(0, 300)), False


def test_random_streams_answer_every_frame(channel: grpc.Channel) -> None:
    """Fuzz, bounded: 150 streams of 1-8 frames. Each frame gets exactly one answer, each valid
    one its inference, and every stream ends OK (a broken frame may still parse as some other
    request, so only the valid ones' outcome is fixed)."""
    rng = random.Random(14)
    want = None
    for n in range(150):
        frames = [_random_frame(rng, 100 * n + i) for i in range(rng.randrange(1, 9))]
        answers = stream(channel, [f for f, _ in frames])
        assert len(answers) == len(frames), (n, [a.error_message for a in answers])
        valid = {str(100 * n + i) for i, (_, ok) in enumerate(frames) if ok}
        answered = {a.infer_response.id: a for a in answers if not a.error_message}
        assert valid <= set(answered), (n, valid, [a.error_message for a in answers])
        for request_id in valid:
            response = answered[request_id].infer_response
            logits = np.frombuffer(response.raw_output_contents[0], np.float32)
            if want is None:
                want = logits
            np.testing.assert_allclose(logits, want, rtol=1e-6)
    # and the server still serves an ordinary stream
    assert [a.infer_response.id for a in stream(channel, [valid_frame("last")])] == ["last"]
