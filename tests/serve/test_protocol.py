"""The v2 protocol layer: request bytes built by hand as tritonclient builds them, and back."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from crossinfer.errors import ProtocolError
from crossinfer.model import TensorSpec
from crossinfer.serve.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    build_infer_response,
    datatype_of,
    error_body,
    model_metadata,
    parse_infer_request,
)

LIMIT = 1 << 20

SAMPLES: dict[str, np.ndarray[Any, Any]] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 255, 7], [1, 2, 3]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535, 7], [1, 2, 3]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 7], [1, 2, 3]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1, 7], [1, 2, 3]], dtype=np.uint64),
    "INT8": np.array([[-128, 127, 0], [1, -2, 3]], dtype=np.int8),
    "INT16": np.array([[-32768, 32767, 0], [1, -2, 3]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1, 0], [1, -2, 3]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1, 0], [1, -2, 3]], dtype=np.int64),
    "FP16": np.array([[0.1, -65504, 1e-7], [1.5, 2, 3]], dtype=np.float16),
    "FP32": np.array([[0.1, -3.4e38, 1e-45], [1.5, 2, 3]], dtype=np.float32),
    "FP64": np.array([[0.1, -1.7e308, 5e-324], [1.5, 2, 3]], dtype=np.float64),
    "BF16": np.array([[0.1, -3e38, 1e-30], [1.5, 2, 3]], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([[b"", b"a", b"hello"], [b"x" * 300, b"\xc3\xa9", b"z"]], dtype=object),
}


def spec(name: str, datatype: str, shape: tuple[int | str | None, ...] | None) -> TensorSpec:
    dtype = "bfloat16" if datatype == "BF16" else DATATYPES[datatype].name
    return TensorSpec(name=name, dtype=dtype, shape=shape, onnx_type=0)


def binary_of(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    """What tritonclient's set_data_from_numpy(binary_data=True) puts on the wire."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in array.ravel())
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def json_of(array: np.ndarray[Any, Any], datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [v.decode() for v in array.ravel()]
    flat = array.ravel()
    return flat.astype(np.float64).tolist() if datatype in ("FP16", "BF16") else flat.tolist()


def request(
    tensors: list[tuple[str, str, list[int], Any, bytes | None]],
    **extra: Any,
) -> tuple[bytes, int | None]:
    """JSON header followed by binary tensors; (body, header_length or None if all JSON)."""
    inputs, blobs = [], []
    for name, datatype, shape, data, blob in tensors:
        item: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if blob is None:
            item["data"] = data
        else:
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        inputs.append(item)
    header = json.dumps({"inputs": inputs, **extra}).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def parse(
    body: bytes,
    header_length: int | None,
    specs: list[TensorSpec],
    *,
    encoding: str | None = None,
    limit: int = LIMIT,
    outputs: list[TensorSpec] | None = None,
) -> InferRequest:
    return parse_infer_request(
        body,
        header_length=header_length,
        content_encoding=encoding,
        inputs=specs,
        max_body_bytes=limit,
        outputs=outputs,
    )


def assert_equal(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.tolist() == want.tolist()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("form", ["binary", "json-flat", "json-nested"])
def test_request_round_trip_every_datatype(datatype: str, form: str) -> None:
    want = SAMPLES[datatype]
    tensor: tuple[str, str, list[int], Any, bytes | None]
    if form == "binary":
        tensor = ("x", datatype, [2, 3], None, binary_of(want, datatype))
    else:
        data = json_of(want, datatype)
        if form == "json-nested":
            data = [data[:3], data[3:]]
        tensor = ("x", datatype, [2, 3], data, None)
    body, length = request([tensor])
    parsed = parse(body, length, [spec("x", datatype, ("batch", 3))])
    assert_equal(parsed.inputs["x"], want)


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("as_binary", [True, False])
def test_response_round_trip_every_datatype(datatype: str, as_binary: bool) -> None:
    want = SAMPLES[datatype]
    body, headers = build_infer_response("m", "1", "req-7", {"y": want}, binary=as_binary)
    if as_binary:
        length = int(headers[HEADER_LENGTH])
        doc = json.loads(body[:length])
        out = doc["outputs"][0]
        blob = body[length:]
        assert out["parameters"]["binary_data_size"] == len(blob) == len(binary_of(want, datatype))
        assert blob == binary_of(want, datatype)
    else:
        assert HEADER_LENGTH not in headers
        assert headers["Content-Type"] == "application/json"
        doc = json.loads(body)
        out = doc["outputs"][0]
        assert out["data"] == json_of(want, datatype)
        got = (
            np.array([s.encode() for s in out["data"]], dtype=object)
            if datatype == "BYTES"
            else np.array(out["data"], dtype=DATATYPES[datatype])
        )
        assert_equal(got.reshape(out["shape"]), want)
    assert doc["model_name"] == "m"
    assert doc["model_version"] == "1"
    assert doc["id"] == "req-7"
    assert out["name"] == "y"
    assert out["datatype"] == datatype
    assert out["shape"] == [2, 3]


def test_bytes_elements_are_length_prefixed() -> None:
    want = np.array([b"ab", b"", b"\x00\xff"], dtype=object)
    blob = b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\x00\xff"
    body, length = request([("s", "BYTES", [3], None, blob)])
    parsed = parse(body, length, [spec("s", "BYTES", (3,))])
    assert_equal(parsed.inputs["s"], want)
    # non-UTF-8 BYTES cannot be JSON strings, so they go binary even when JSON was asked for
    out, headers = build_infer_response("m", "1", None, {"s": want}, binary=False)
    assert out[int(headers[HEADER_LENGTH]) :] == blob


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
def test_compressed_bodies(encoding: str) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, length = request([("x", "FP32", [3, 4], None, x.tobytes())])
    if encoding == "gzip":
        packed = gzip.compress(body)
    elif encoding == "deflate":
        packed = zlib.compress(body)
    else:
        raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = raw.compress(body) + raw.flush()
    header_encoding = "deflate" if encoding == "deflate-raw" else encoding
    parsed = parse(packed, length, [spec("x", "FP32", (None, 4))], encoding=header_encoding)
    assert_equal(parsed.inputs["x"], x)


def test_mixed_json_and_binary_inputs_and_request_fields() -> None:
    a = np.array([[1, 2]], dtype=np.int64)
    b = np.array([0.5, 1.5, 2.5], dtype=np.float32)
    c = np.array([b"hi"], dtype=object)
    body, length = request(
        [
            ("a", "INT64", [1, 2], None, a.tobytes()),
            ("c", "BYTES", [1], ["hi"], None),
            ("b", "FP32", [3], None, b.tobytes()),
        ],
        id="42",
        parameters={"priority": 1, "timeout": 5000, "binary_data_output": True, "custom": "x"},
        outputs=[{"name": "y2", "parameters": {"binary_data": False}}, {"name": "y1"}],
    )
    specs = [spec("a", "INT64", ("n", 2)), spec("b", "FP32", (3,)), spec("c", "BYTES", None)]
    outs = [spec("y1", "FP32", ("n",)), spec("y2", "FP32", ("n",)), spec("y3", "FP32", ("n",))]
    parsed = parse(body, length, specs, outputs=outs)
    assert_equal(parsed.inputs["a"], a)
    assert_equal(parsed.inputs["b"], b)
    assert_equal(parsed.inputs["c"], c)
    assert parsed.id == "42"
    assert parsed.priority == 1
    assert parsed.timeout_us == 5000
    assert parsed.parameters["custom"] == "x"
    assert parsed.requested_outputs == ("y2", "y1")
    assert parsed.binary_outputs == {"y2": False, "y1": True}
    assert parsed.wants_binary("y1") and not parsed.wants_binary("y2")


def test_no_outputs_named_uses_binary_data_output_for_all() -> None:
    body, _ = request([("x", "FP32", [1], [1.0], None)], parameters={"binary_data_output": True})
    outs = [spec("y1", "FP32", (1,)), spec("y2", "FP32", (1,))]
    parsed = parse(body, None, [spec("x", "FP32", (1,))], outputs=outs)
    assert parsed.requested_outputs == ()
    assert parsed.binary_outputs == {"y1": True, "y2": True}
    assert parsed.id is None and parsed.priority == 0 and parsed.timeout_us == 0


def test_response_subset_in_requested_order_and_mixed_binary() -> None:
    outputs = {
        "y1": np.array([1.0, 2.0], dtype=np.float32),
        "y2": np.array([[3, 4]], dtype=np.int32),
        "y3": np.array([True]),
    }
    body, headers = build_infer_response(
        "m", "2", None, outputs, requested=["y3", "y1"], binary={"y1": True}
    )
    length = int(headers[HEADER_LENGTH])
    doc = json.loads(body[:length])
    assert "id" not in doc
    assert [o["name"] for o in doc["outputs"]] == ["y3", "y1"]
    assert doc["outputs"][0]["data"] == [True]
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert body[length:] == outputs["y1"].tobytes()


def test_non_finite_float_outputs_go_binary() -> None:
    y = np.array([np.nan, np.inf, 1.0], dtype=np.float32)
    body, headers = build_infer_response("m", "1", None, {"y": y}, binary=False)
    length = int(headers[HEADER_LENGTH])
    assert json.loads(body[:length])["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert body[length:] == y.tobytes()


def test_model_metadata_and_error_body() -> None:
    meta = model_metadata(
        "resnet",
        ["1"],
        "onnxruntime_onnx",
        [spec("pixels", "FP32", ("batch", 3, 224, None)), spec("ids", "BYTES", None)],
        [spec("logits", "BF16", ("batch", 1000))],
    )
    assert meta == {
        "name": "resnet",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 224, -1]},
            {"name": "ids", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "logits", "datatype": "BF16", "shape": [-1, 1000]}],
    }
    assert json.loads(error_body('input "x" is bad')) == {"error": 'input "x" is bad'}
    assert datatype_of("int64") == "INT64"
    with pytest.raises(ValueError, match="complex64"):
        datatype_of("complex64")


# --------------------------------------------------------------------------- bad requests

X = [spec("x", "FP32", ("batch", 4))]
GOOD = np.zeros((2, 4), dtype=np.float32)


def rejects(
    body: bytes,
    length: int | None,
    status: int,
    *fragments: str,
    specs: list[TensorSpec] = X,
    **kwargs: Any,
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(body, length, specs, **kwargs)
    assert info.value.status == status
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_binary_size_mismatch_names_the_tensor() -> None:
    specs = [spec("a", "FP32", (2,)), spec("b", "FP32", (2,))]
    a, b = np.zeros(2, np.float32).tobytes(), np.zeros(2, np.float32).tobytes()
    # sizes declared larger than the body
    body, length = request([("a", "FP32", [2], None, a), ("b", "FP32", [2], None, b)])
    rejects(body[:-3], length, 400, "input 'b'", "binary_data_size 8", "5 bytes", specs=specs)
    # extra bytes after the last tensor
    rejects(body + b"\x00", length, 400, "1 bytes", "after input 'b'", specs=specs)
    # declared size disagrees with the shape
    body, length = request(
        [("a", "FP32", [2], None, a + b"\x00" * 4), ("b", "FP32", [2], [0, 0], None)]
    )
    rejects(body, length, 400, "input 'a'", "binary_data_size 12", "needs 8 bytes", specs=specs)


def test_bytes_element_overrunning_its_tensor() -> None:
    blob = struct.pack("<I", 10) + b"abc"
    body, length = request([("s", "BYTES", [1], None, blob)])
    rejects(body, length, 400, "input 's'", "claims 10 bytes", specs=[spec("s", "BYTES", (1,))])
    blob = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"
    body, length = request([("s", "BYTES", [1], None, blob)])
    rejects(body, length, 400, "input 's'", "needs 1", specs=[spec("s", "BYTES", (1,))])


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_numbers(token: str) -> None:
    body = (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,'
        + token.encode()
        + b"]}]}"
    )
    rejects(body, None, 400, token, "finite")


def test_json_nesting_and_integers_beyond_64_bits() -> None:
    # the parser refuses nesting past 1024 levels; below that a BYTES tensor's nested data
    # flattens (iteratively: Python's recursion limit plays no part) to its values in order
    deep = b"[" * 2000 + b"]" * 2000
    rejects(b'{"inputs":' + deep + b"}", None, 400, "nested too deeply")
    nested = "[" * 1000 + '"a"' + "]" * 1000
    body = '{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],"data":[' + nested + ',["b"]]}]}'
    strings = parse(body.encode(), None, [spec("s", "BYTES", (2,))]).inputs["s"]
    assert strings.tolist() == [b"a", b"b"]
    # beyond 64 bits the parser yields a float: the range check still names the value
    body, _ = request([("x", "UINT64", [1], [2**64], None)])
    rejects(
        body,
        None,
        400,
        "input 'x'",
        "values must lie in [0, 18446744073709551615]",
        "18446744073709551616",
        specs=[spec("x", "UINT64", (1,))],
    )
    body, _ = request([("x", "UINT64", [1], [2**64 - 1], None)])
    exact = parse(body, None, [spec("x", "UINT64", (1,))]).inputs["x"]
    assert exact.dtype == np.uint64 and int(exact[0]) == 2**64 - 1


def test_json_number_too_large_for_the_type() -> None:
    body, _ = request([("x", "FP16", [1], [1e6], None)])
    rejects(body, None, 400, "input 'x'", "not finite as FP16", specs=[spec("x", "FP16", (1,))])
    body, _ = request([("x", "UINT8", [1], [300], None)])
    rejects(body, None, 400, "input 'x'", "[0, 255]", "300", specs=[spec("x", "UINT8", (1,))])


def test_truncated_body() -> None:
    body, length = request([("x", "FP32", [2, 4], None, GOOD.tobytes())])
    assert length is not None
    rejects(body[: length - 5], length, 400, HEADER_LENGTH, "truncated")
    rejects(body[:-1], length, 400, "input 'x'", "31 bytes")
    rejects(gzip.compress(body)[:-12], length, 400, "truncated gzip", encoding="gzip")


def test_oversized_body_and_zip_bomb() -> None:
    body, length = request([("x", "FP32", [2, 4], None, GOOD.tobytes())])
    rejects(body, length, 413, "limit of 40 bytes", limit=40)
    bomb = gzip.compress(b"\x00" * (8 << 20))
    assert len(bomb) < LIMIT
    rejects(bomb, None, 413, "inflates (gzip)", encoding="gzip")
    rejects(body, length, 400, "not valid deflate", encoding="deflate")
    rejects(body, length, 415, "'br'", encoding="br")


def test_unknown_and_missing_inputs() -> None:
    body, _ = request([("y", "FP32", [2, 4], GOOD.ravel().tolist(), None)])
    rejects(body, None, 400, "unexpected input 'y'", "'x'")
    body, _ = request([])
    rejects(body, None, 400, "missing input 'x' (FP32 of shape [-1,4])")
    body, _ = request([("x", "FP32", [1, 4], [0] * 4, None)], outputs=[{"name": "nope"}])
    rejects(body, None, 400, "output 'nope'", "'y'", outputs=[spec("y", "FP32", None)])


def test_wrong_datatype() -> None:
    body, _ = request([("x", "INT64", [2, 4], [0] * 8, None)])
    rejects(body, None, 400, "model input 'x' expects FP32 of shape [-1,4], got INT64 [2,4]")
    body, _ = request([("x", "FP32", [2, 4], ["a"] * 8, None)])
    rejects(body, None, 400, "input 'x' is FP32", "numbers")


def test_wrong_fixed_dim_and_element_count() -> None:
    body, _ = request([("x", "FP32", [2, 3], [0] * 6, None)])
    rejects(body, None, 400, "model input 'x' expects FP32 of shape [-1,4], got FP32 [2,3]")
    body, _ = request([("x", "FP32", [4], [0] * 4, None)])
    rejects(body, None, 400, "got FP32 [4]")
    body, _ = request([("x", "FP32", [2, 4], [0] * 7, None)])
    rejects(body, None, 400, "input 'x' has 7 elements", "needs 8")
    body, _ = request([("x", "FP32", [2, 4], [[0] * 4, [0] * 3], None)])
    rejects(body, None, 400, "input 'x'", "ragged")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"inputs": [', "malformed at line 1 column 13"),
        (b'{"id": "\xff"}', "UTF-8"),
        (b"[]", "must be a JSON object"),
        (b'{"inputs": {}}', "'inputs' must be a list"),
        (b'{"id": 5, "inputs": []}', "'id' must be a string"),
        (b'{"inputs": [], "parameters": {"priority": -1}}', "'priority'"),
        (b'{"inputs": [], "parameters": {"binary_data_output": 1}}', "binary_data_output"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": "2,4"}]}', "'shape'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4]}]}', "neither"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1,4], "data": 3}]}', "list"),
    ],
)
def test_malformed_requests(body: bytes, fragment: str) -> None:
    rejects(body, None, 400, fragment)
