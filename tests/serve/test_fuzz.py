"""Malformed requests thrown at the HTTP server (hypothesis): every answer is a 4xx protocol error.

Each strategy builds requests that are invalid by construction (random bytes, truncated or
mutated JSON, binary sizes that disagree with the body, garbage compression), so the only
right answer is a 4xx with ``{"error": "..."}``; after them a correct request still works.
"""

from __future__ import annotations

import gc
import http.client
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_models import bytes_identity_model, model_dir, two_output_model

from crossinfer.serve.repository import ModelRepository
from crossinfer.serve.server import BackgroundServer, ServerConfig

INFER = "/v2/models/two/infer"
A = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]  # "a" and "b" are FP32 [2, 3]: these six values
VALID: dict[str, Any] = {
    "id": "ok",
    "inputs": [
        {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": A},
        {"name": "b", "shape": [2, 3], "datatype": "FP32", "data": A},
    ],
}
VALID_BODY = json.dumps(VALID).encode()

Request = tuple[bytes, dict[str, str]]


class Client:
    """One keep-alive connection, reopened only if the server closed it."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.conn = http.client.HTTPConnection(host, timeout=30)

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request("POST", INFER, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    root = tmp_path_factory.mktemp("repository")
    model_dir(root, "two", two_output_model(), "max_batch_size = 8\n")
    model_dir(root, "text", bytes_identity_model())
    config = ServerConfig(http_port=0, grpc_port=None, metrics_port=None, max_body_bytes=64 * 1024)
    with BackgroundServer(ModelRepository(root), config) as server:
        c = Client(server.http_url)
        yield c
        c.conn.close()
    gc.collect()


# --- strategies: each one only ever builds invalid requests -----------------------------------

random_bytes = st.binary(max_size=2000).map(lambda body: (body, {}))

random_with_header_length = st.tuples(st.binary(max_size=2000), st.integers(0, 5000)).map(
    lambda t: (t[0], {"Inference-Header-Content-Length": str(t[1])})
)

garbage_compressed = st.tuples(st.binary(max_size=500), st.sampled_from(["gzip", "deflate"])).map(
    lambda t: (t[0], {"Content-Encoding": t[1]})
)

truncated = st.integers(0, len(VALID_BODY) - 1).map(lambda n: (VALID_BODY[:n], {}))

_not_fp32 = st.one_of(
    st.sampled_from(["FP16", "FP64", "INT32", "INT64", "BOOL", "BYTES", "BF16", "UINT8", "fp32"]),
    st.text(max_size=8).filter(lambda t: t != "FP32"),
    st.integers(),
    st.none(),
)
_bad_shape = st.one_of(
    st.lists(st.integers(-3, 8), max_size=4).filter(lambda s: s != [2, 3]),
    st.text(max_size=5),
    st.none(),
    st.lists(st.floats(allow_nan=False), min_size=1, max_size=3),
)
_bad_data = st.one_of(
    st.lists(st.floats(-1e3, 1e3, width=32), max_size=12).filter(lambda d: len(d) != 6),
    st.lists(
        st.one_of(
            st.text(max_size=3),
            st.none(),
            st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
        ),
        min_size=1,
        max_size=6,
    ).map(lambda d: [*d, *A][:6]),
    st.just([[1.0, 2.0, 3.0], [4.0, 5.0]]),  # ragged
    st.lists(st.booleans(), min_size=6, max_size=6),
    st.just([1e39, 0, 0, 0, 0, 0]),  # beyond FP32
    st.one_of(st.text(max_size=5), st.integers(), st.floats(allow_nan=False), st.none()),
)
_bad_parameters = st.one_of(
    st.fixed_dictionaries(
        {
            "priority": st.one_of(
                st.integers(max_value=-1),
                st.integers(2, 2**70),
                st.text(max_size=3),
                st.floats(0.1, 9),
            )
        }
    ),
    st.fixed_dictionaries(
        {"timeout": st.one_of(st.integers(max_value=-1), st.text(max_size=3), st.floats(0.1, 9))}
    ),
    st.fixed_dictionaries({"binary_data_output": st.one_of(st.integers(), st.text(max_size=3))}),
    st.one_of(st.text(max_size=3), st.integers(), st.lists(st.integers(), max_size=2)),
)


def _mutate(kind: str, value: Any) -> dict[str, Any]:
    doc = json.loads(VALID_BODY)
    first = doc["inputs"][0]
    if kind in ("datatype", "shape", "data"):
        first[kind] = value
    elif kind == "name":
        first["name"] = value
    elif kind == "drop_key":
        del first[value]
    elif kind == "inputs":
        doc["inputs"] = value
    elif kind == "parameters":
        doc["parameters"] = value
    elif kind == "outputs":
        doc["outputs"] = value
    elif kind == "id":
        doc["id"] = value
    elif kind == "duplicate":
        doc["inputs"].append(dict(first))
    elif kind == "missing":
        doc["inputs"].pop(value)
    return doc


mutated = st.one_of(
    _not_fp32.map(lambda v: _mutate("datatype", v)),
    _bad_shape.map(lambda v: _mutate("shape", v)),
    _bad_data.map(lambda v: _mutate("data", v)),
    st.text(max_size=6).filter(lambda n: n not in ("a", "b")).map(lambda v: _mutate("name", v)),
    st.sampled_from(["name", "datatype", "shape", "data"]).map(lambda k: _mutate("drop_key", k)),
    st.one_of(
        st.none(),
        st.text(max_size=3),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    ).map(lambda v: _mutate("inputs", v)),
    _bad_parameters.map(lambda v: _mutate("parameters", v)),
    st.one_of(
        st.lists(
            st.fixed_dictionaries(
                {"name": st.text(max_size=5).filter(lambda n: n not in ("doubled", "summed"))}
            ),
            min_size=1,
            max_size=2,
        ),
        st.text(max_size=3),
        st.lists(st.integers(), min_size=1, max_size=2),
    ).map(lambda v: _mutate("outputs", v)),
    st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.booleans()).map(
        lambda v: _mutate("id", v)
    ),
    st.just("duplicate").map(lambda k: _mutate(k, None)),
    st.sampled_from([0, 1]).map(lambda i: _mutate("missing", i)),
).map(lambda doc: (json.dumps(doc).encode(), {}))


def _binary_request(size: int, tail: bytes) -> Request:
    header = json.loads(VALID_BODY)
    del header["inputs"][0]["data"]
    header["inputs"][0]["parameters"] = {"binary_data_size": size}
    text = json.dumps(header).encode()
    return text + tail, {"Inference-Header-Content-Length": str(len(text))}


bad_binary = (
    st.tuples(st.integers(0, 100), st.binary(max_size=100))
    .filter(lambda t: not (t[0] == 24 and len(t[1]) == 24))  # 24 bytes each would be valid
    .map(lambda t: _binary_request(*t))
)

malformed = st.one_of(
    random_bytes,
    random_with_header_length,
    garbage_compressed,
    truncated,
    mutated,
    bad_binary,
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(request=malformed)
def test_every_malformed_request_gets_a_4xx_protocol_error(
    client: Client, request: Request
) -> None:
    body, headers = request
    status, payload = client.post(body, headers)
    assert 400 <= status < 500, (status, payload[:300], body[:200], headers)
    error = json.loads(payload)["error"]
    assert isinstance(error, str) and error


def test_a_correct_request_still_works_after_the_fuzzing(client: Client) -> None:
    # runs after the fuzz test (file order); on its own it checks the template is valid
    status, payload = client.post(VALID_BODY, {})
    assert status == 200, payload[:300]
    doc = json.loads(payload)
    assert doc["id"] == "ok"
    outputs = {o["name"]: o["data"] for o in doc["outputs"]}
    assert np.allclose(outputs["doubled"], [2 * v for v in A])
    assert np.allclose(outputs["summed"], [2 * v for v in A])
    binary, headers = _binary_request(24, np.asarray(A[:6], np.float32).tobytes())
    status, payload = client.post(binary, headers)
    assert status == 200, payload[:300]
    assert not math.isnan(sum(json.loads(payload)["outputs"][0]["data"]))
