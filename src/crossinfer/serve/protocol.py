"""The KServe v2 / Open Inference Protocol REST messages, with Triton's binary tensor extension.

Pure functions from request bytes to numpy arrays and back; no I/O and no web framework here.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ml_dtypes  # installed with onnx; numpy has no bfloat16 of its own
import numpy as np
import orjson

from crossinfer.errors import ProtocolError
from crossinfer.model import Dim, TensorSpec
from crossinfer.tensor_specs import shape_fits

if TYPE_CHECKING:
    from crossinfer.serve.shm import OutputSlot, SharedMemoryRegistry

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "SERVER_EXTENSIONS",
    "InferRequest",
    "build_infer_response",
    "datatype_of",
    "decode_bytes_tensor",
    "encode_bytes_tensor",
    "error_body",
    "model_metadata",
    "numpy_dtype_of",
    "parse_infer_request",
    "server_metadata",
    "write_shared_memory_outputs",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
"""HTTP header giving the length of the JSON part when binary tensors follow it."""

_BF16 = np.dtype(ml_dtypes.bfloat16)
_OBJECT = np.dtype(object)

DATATYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": _BF16,
    "BYTES": _OBJECT,  # an object array whose elements are bytes
}
"""v2 datatype name -> the numpy dtype crossinfer uses for it."""

# TensorSpec.dtype is a numpy dtype name; ONNX STRING tensors come out as "object"
_NUMPY_TO_V2 = {dt.name: name for name, dt in DATATYPES.items()} | {
    "bfloat16": "BF16",
    "object": "BYTES",
    "str": "BYTES",
    "bytes": "BYTES",
}

# the same by dtype object: `dtype.name` is a Python property that costs microseconds per call
_DTYPE_TO_V2: dict[np.dtype[Any], str] = {dt: name for name, dt in DATATYPES.items()}


def _datatype_of_array(array: np.ndarray) -> str:
    found = _DTYPE_TO_V2.get(array.dtype)
    return found if found is not None else datatype_of(array.dtype.name)


_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
_INT_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
_LENGTH = struct.Struct("<I")


def datatype_of(dtype: str) -> str:
    """The v2 datatype name for a numpy dtype name ("float32" -> "FP32")."""
    try:
        return _NUMPY_TO_V2[dtype]
    except KeyError:
        raise ValueError(
            f"numpy dtype '{dtype}' has no KServe v2 datatype: "
            f"supported are {', '.join(sorted(_NUMPY_TO_V2))}"
        ) from None


def numpy_dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for a v2 datatype name ("FP32" -> float32)."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise ValueError(
            f"'{datatype}' is not a KServe v2 datatype: use one of {', '.join(DATATYPES)}"
        ) from None


# --------------------------------------------------------------------------- requests


@dataclass
class InferRequest:
    """One parsed inference request, inputs already checked against the model's signature."""

    id: str | None
    inputs: dict[str, np.ndarray[Any, Any]]
    requested_outputs: tuple[str, ...] = ()  # empty: every output of the model
    priority: int = 0  # 0: the model's default; 1 is the highest
    timeout_us: int = 0  # 0: no timeout
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_data_output: bool = False  # request-level default for outputs not named above
    parameters: dict[str, Any] = field(default_factory=dict)  # every request parameter, as sent
    # requested outputs to be written into a registered shared memory region, by name
    shared_memory_outputs: dict[str, OutputSlot] = field(default_factory=dict)

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` should travel as binary data."""
        return self.binary_outputs.get(name, self.binary_data_output)


def parse_infer_request(
    body: bytes,
    *,
    header_length: int | None,
    content_encoding: str | None,
    inputs: Sequence[TensorSpec],
    max_body_bytes: int,
    outputs: Sequence[TensorSpec] | None = None,
    shared_memory: SharedMemoryRegistry | None = None,
) -> InferRequest:
    """Decode a ``POST .../infer`` body into numpy inputs, or raise `ProtocolError`.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None when absent: the
    body is all JSON); it counts bytes of the decompressed body. ``outputs``, when given, lets
    requested output names be checked and ``binary_outputs`` be filled in for every output.
    ``shared_memory`` holds the registered regions that inputs and outputs may name (Triton's
    ``shared_memory_region`` parameters); without it such tensors are refused.
    """
    body = _decompress(body, content_encoding, max_body_bytes)
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(
                400,
                f"{HEADER_LENGTH} is {header_length} but the body has only {len(body)} bytes: "
                "the body is truncated or the header is wrong",
            )
        view = memoryview(body)
        header, binary = bytes(view[:header_length]), view[header_length:]
    if len(header) > _PRECHECK_BYTES:
        _check_value_count(header)
    doc = _load_json(header)
    if not isinstance(doc, dict):
        raise ProtocolError(
            400, f"inference request must be a JSON object, got {type(doc).__name__}"
        )
    return parse_infer_document(
        doc, binary, inputs=inputs, outputs=outputs, shared_memory=shared_memory
    )


def parse_infer_document(
    doc: dict[str, Any],
    binary: memoryview,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec] | None = None,
    shared_memory: SharedMemoryRegistry | None = None,
) -> InferRequest:
    """`parse_infer_request` after the JSON: the request header as a dict, then the binary
    tensors in order (gRPC builds the dict from protobuf fields, skipping a JSON round trip)."""
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, f"request 'id' must be a string, got {_json_type(request_id)}")
    params = _object(doc.get("parameters"), "request 'parameters'")
    priority = _uint(params.get("priority", 0), "request parameter 'priority'")
    timeout_us = _uint(params.get("timeout", 0), "request parameter 'timeout' (microseconds)")
    binary_default = _bool(
        params.get("binary_data_output", False), "request parameter 'binary_data_output'"
    )

    feeds = _parse_inputs(doc.get("inputs"), binary, inputs, shared_memory)
    requested, binary_outputs, slots = _parse_outputs(
        doc.get("outputs"), outputs, binary_default, shared_memory
    )
    return InferRequest(
        id=request_id,
        inputs=feeds,
        requested_outputs=requested,
        priority=priority,
        timeout_us=timeout_us,
        binary_outputs=binary_outputs,
        binary_data_output=binary_default,
        parameters=params,
        shared_memory_outputs=slots,
    )


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    if len(body) > limit:
        raise ProtocolError(
            413, f"request body is {len(body)} bytes, more than the limit of {limit} bytes"
        )
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        # HTTP's "deflate" is zlib-wrapped (tritonclient uses zlib.compress); some clients
        # send raw deflate, recognised by the missing zlib header
        wbits = zlib.MAX_WBITS if body[:1] and (body[0] & 0x0F) == 8 else -zlib.MAX_WBITS
    else:
        raise ProtocolError(
            415, f"Content-Encoding '{encoding}' is not supported: send gzip, deflate or identity"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        # bounded output: a zip bomb stops at limit + 1 bytes instead of filling memory
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(400, f"request body is not valid {coding} data: {exc}") from exc
    if len(out) > limit:
        raise ProtocolError(
            413, f"request body inflates ({coding}) to more than the limit of {limit} bytes"
        )
    if not inflater.eof:
        raise ProtocolError(400, f"request body is truncated {coding} data")
    return out


_PRECHECK_BYTES = 1024 * 1024
_SHAPE = re.compile(rb'"shape"\s*:\s*\[([0-9\s,]*)\]')


def _check_value_count(text: bytes) -> None:
    """Refuse a large JSON body whose values far outnumber what its shapes declare, before
    decoding it: decoding 60 MiB of JSON takes seconds and hundreds of MB to say the same.

    A cheap bound, not a parse: every value but the last in an array is followed by a comma,
    and nesting adds at most one comma per value, so more than ``2 x declared`` commas (plus
    room for the object's own) cannot be a valid request. BYTES may hold commas: not checked.
    """
    if b'"BYTES"' in text:
        return
    declared = 0
    shapes = 0
    for match in _SHAPE.finditer(text):
        dims = match.group(1).split(b",")
        try:
            declared += math.prod(int(d) for d in dims) if match.group(1).strip() else 1
        except ValueError:
            return  # an odd shape: the full parse names it
        shapes += 1
    if not shapes:
        return
    commas = text.count(b",")
    if commas > 2 * declared + 64 * shapes + 4096:
        raise ProtocolError(
            400,
            f"the request JSON has {commas} commas, far more than the {declared} values its "
            "inputs' shapes declare in all: make each input's 'data' match its 'shape'",
        )


def _load_json(text: bytes) -> Any:
    """The request's JSON, with orjson: 7-9x the stdlib's parser on tensors of numbers (a 4 KB
    request of 784 floats: 28-36 us against 220-260 us). Strict as JSON is: NaN and Infinity are
    refused, nesting deeper than 1024 is refused, integers beyond 64 bits become floats (the
    integer checks below name them)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in exc.msg:
            raise ProtocolError(400, f"request JSON is not valid UTF-8: {exc.msg}") from exc
        if "depth limit" in exc.msg:
            raise ProtocolError(400, "request JSON is nested too deeply") from exc
        hint = ""
        constant = re.search(rb"-?Infinity|NaN", text)
        if constant:
            hint = f" ({constant.group().decode()} is not JSON: send finite numbers)"
        raise ProtocolError(
            400,
            f"request JSON is malformed at line {exc.lineno} column {exc.colno}: {exc.msg}{hint}",
        ) from exc


def _shared_memory_params(params: dict[str, Any], what: str) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) from a tensor's shared memory parameters, or None."""
    region = params.get("shared_memory_region")
    if region is None:
        stray = [k for k in ("shared_memory_byte_size", "shared_memory_offset") if k in params]
        if stray:
            raise ProtocolError(
                400, f"{what} has {stray[0]} but no 'shared_memory_region': name the region"
            )
        return None
    if not isinstance(region, str) or not region:
        raise ProtocolError(
            400, f"{what} parameter 'shared_memory_region' must be a region name, got {region!r}"
        )
    if "shared_memory_byte_size" not in params:
        raise ProtocolError(
            400,
            f"{what} names shared memory region '{region}' without 'shared_memory_byte_size': "
            "both are required",
        )
    size = _uint(params["shared_memory_byte_size"], f"{what} parameter 'shared_memory_byte_size'")
    offset = _uint(
        params.get("shared_memory_offset", 0), f"{what} parameter 'shared_memory_offset'"
    )
    return region, offset, size


def _no_registry(what: str) -> ProtocolError:
    return ProtocolError(
        400, f"{what} uses shared memory, which this server does not offer: send the data"
    )


def _parse_inputs(
    raw: Any,
    binary: memoryview,
    specs: Sequence[TensorSpec],
    shared_memory: SharedMemoryRegistry | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    if not isinstance(raw, list):
        raise ProtocolError(
            400, f"request 'inputs' must be a list of tensors, got {_json_type(raw)}"
        )
    by_name = {spec.name: spec for spec in specs}
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    last_binary: str | None = None
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ProtocolError(400, f"request input #{index} must be an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise ProtocolError(400, f"request input #{index} has no string 'name'")
        spec = by_name.get(name)
        if spec is None:
            raise ProtocolError(
                400,
                f"unexpected input '{name}': the model's inputs are "
                f"{', '.join(repr(n) for n in by_name) or 'none'}",
            )
        if name in feeds:
            raise ProtocolError(400, f"input '{name}' is given more than once")
        datatype = item.get("datatype")
        expected = datatype_of(spec.dtype)
        shape = _shape(item.get("shape"), name)
        if datatype != expected:
            raise ProtocolError(400, _mismatch(spec, f"{datatype} {_fmt_shape(shape)}"))
        _check_shape(spec, shape, expected)
        params = _object(item.get("parameters"), f"input '{name}' 'parameters'")
        shm = _shared_memory_params(params, f"input '{name}'")
        size = params.get("binary_data_size")
        if shm is not None:
            if "data" in item or size is not None:
                raise ProtocolError(
                    400,
                    f"input '{name}' names shared memory region '{shm[0]}' and also carries "
                    "'data' or binary_data_size: send it one way",
                )
            if shared_memory is None:
                raise _no_registry(f"input '{name}'")
            region, shm_offset, shm_size = shm
            if datatype != "BYTES":
                needed = math.prod(shape) * DATATYPES[datatype].itemsize
                if shm_size != needed:
                    raise ProtocolError(
                        400,
                        f"input '{name}' has shared_memory_byte_size {shm_size} but {datatype} "
                        f"{_fmt_shape(shape)} needs {needed} bytes",
                    )
            chunk = shared_memory.input_data(name, region, shm_offset, shm_size)
            array = _from_binary(memoryview(chunk), datatype, shape, name)
            if array.flags.writeable:
                array.flags.writeable = False  # the client's memory: the model must not write it
            feeds[name] = array
        elif size is not None:
            if "data" in item:
                raise ProtocolError(
                    400, f"input '{name}' has both 'data' and binary_data_size: send one"
                )
            size = _uint(size, f"input '{name}' parameter 'binary_data_size'")
            if offset + size > len(binary):
                raise ProtocolError(
                    400,
                    f"input '{name}' declares binary_data_size {size} but only "
                    f"{len(binary) - offset} bytes of binary data remain: the body is "
                    "truncated or the sizes are wrong",
                )
            chunk = binary[offset : offset + size]
            offset += size
            last_binary = name
            feeds[name] = _from_binary(chunk, datatype, shape, name)
        elif "data" in item:
            feeds[name] = _from_json(item["data"], datatype, shape, name)
        else:
            raise ProtocolError(
                400, f"input '{name}' has neither 'data' nor parameter 'binary_data_size'"
            )
    if offset != len(binary):
        after = f"after input '{last_binary}'" if last_binary else "but no input is binary"
        raise ProtocolError(
            400,
            f"the body holds {len(binary) - offset} bytes of binary data {after}: the "
            "binary_data_size parameters must add up to the bytes after the JSON header",
        )
    missing = [spec.name for spec in specs if spec.name not in feeds]
    if missing:
        raise ProtocolError(
            400,
            "missing input "
            + ", ".join(f"'{n}' ({_spec_str(by_name[n])})" for n in missing)
            + ": every model input must be given",
        )
    return feeds


def _parse_outputs(
    raw: Any,
    specs: Sequence[TensorSpec] | None,
    binary_default: bool,
    shared_memory: SharedMemoryRegistry | None = None,
) -> tuple[tuple[str, ...], dict[str, bool], dict[str, OutputSlot]]:
    known = None if specs is None else [spec.name for spec in specs]
    slots: dict[str, OutputSlot] = {}
    if raw is None:
        return (), {n: binary_default for n in known or ()}, slots
    if not isinstance(raw, list):
        raise ProtocolError(400, f"request 'outputs' must be a list, got {_json_type(raw)}")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(400, f"requested output #{index} must be an object with a 'name'")
        name = item["name"]
        if known is not None and name not in known:
            raise ProtocolError(
                400,
                f"unexpected requested output '{name}': the model's outputs are "
                f"{', '.join(repr(n) for n in known)}",
            )
        if name in binary:
            raise ProtocolError(400, f"output '{name}' is requested more than once")
        params = _object(item.get("parameters"), f"requested output '{name}' 'parameters'")
        if "classification" in params:
            raise ProtocolError(
                400,
                f"requested output '{name}' asks for classification, which this server does "
                "not offer: ask for the tensor itself",
            )
        shm = _shared_memory_params(params, f"requested output '{name}'")
        if shm is not None:
            if shared_memory is None:
                raise _no_registry(f"requested output '{name}'")
            slots[name] = shared_memory.output_slot(name, *shm)
        names.append(name)
        binary[name] = _bool(
            params.get("binary_data", binary_default),
            f"requested output '{name}' parameter 'binary_data'",
        )
    return tuple(names), binary, slots


def _from_binary(
    chunk: memoryview, datatype: str, shape: tuple[int, ...], name: str
) -> np.ndarray[Any, Any]:
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(chunk, shape, name=name)
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise ProtocolError(
            400,
            f"input '{name}' has binary_data_size {len(chunk)} but {datatype} "
            f"{_fmt_shape(shape)} needs {expected} bytes",
        )
    if datatype == "BOOL":
        # any non-zero byte is true; a bool view of bytes other than 0/1 is undefined
        flags: np.ndarray[Any, Any] = np.frombuffer(chunk, dtype=np.uint8).reshape(shape) != 0
        return flags
    # zero-copy and read-only: the array borrows the request body
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray[Any, Any]:
    count = math.prod(shape)
    if not isinstance(data, list):
        raise ProtocolError(
            400, f"input '{name}' 'data' must be a (flat or nested) list, got {_json_type(data)}"
        )
    if datatype == "BYTES":
        flat: list[Any] = []
        _flatten(data, flat)
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(400, f"input '{name}' is BYTES: its JSON 'data' must be strings")
        values = [v.encode() for v in flat]
        _check_count(len(values), count, datatype, shape, name)
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(shape)
    try:
        arr = np.array(data)
    except (ValueError, OverflowError) as exc:
        raise ProtocolError(
            400, f"input '{name}' 'data' is ragged or not numbers: {_first_line(exc)}"
        ) from exc
    _check_count(arr.size, count, datatype, shape, name)
    dtype = DATATYPES[datatype]
    if arr.size == 0:
        return np.zeros(shape, dtype=dtype)
    kind = arr.dtype.kind
    if datatype in _INT_TYPES and kind in "fO":
        # numpy infers float64 (lossy) or object for ints beyond int64, e.g. UINT64 near 2**64
        arr = _exact_ints(data, datatype, name)
        kind = arr.dtype.kind
    if datatype == "BOOL":
        ok = kind == "b"
    elif datatype in _INT_TYPES:
        ok = kind in "iu"
    else:
        ok = kind in "iuf"
    if not ok:
        what = "true/false" if datatype == "BOOL" else "numbers"
        raise ProtocolError(
            400, f"input '{name}' is {datatype}: its JSON 'data' must be {what}, got {arr.dtype}"
        )
    if datatype in _INT_TYPES:
        info = np.iinfo(dtype)
        low, high = int(arr.min()), int(arr.max())
        if low < info.min or high > info.max:
            raise ProtocolError(
                400,
                f"input '{name}' is {datatype}: values must lie in [{info.min}, {info.max}], "
                f"got {low if low < info.min else high}",
            )
    with np.errstate(over="ignore"):  # too large for the type: reported just below
        out = arr.astype(dtype).reshape(shape)
    if datatype in _FLOAT_TYPES and not np.isfinite(out).all():
        raise ProtocolError(
            400,
            f"input '{name}' has a value that is not finite as {datatype} (too large for the "
            "type): send finite numbers in range",
        )
    return out


def _exact_ints(data: list[Any], datatype: str, name: str) -> np.ndarray[Any, Any]:
    flat: list[Any] = []
    _flatten(data, flat)
    info = np.iinfo(DATATYPES[datatype])
    # the JSON parser gives integers beyond 64 bits as floats: out of every integer type's range
    huge = [v for v in flat if isinstance(v, float) and v.is_integer() and abs(v) >= 2**63]
    if huge:
        raise ProtocolError(
            400,
            f"input '{name}' is {datatype}: values must lie in [{info.min}, {info.max}], "
            f"got {int(huge[0])}",
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        raise ProtocolError(400, f"input '{name}' is {datatype}: its JSON 'data' must be integers")
    low, high = min(flat), max(flat)
    if low < info.min or high > info.max:
        raise ProtocolError(
            400,
            f"input '{name}' is {datatype}: values must lie in [{info.min}, {info.max}], "
            f"got {low if low < info.min else high}",
        )
    return np.array(flat, dtype=DATATYPES[datatype])


def _flatten(data: list[Any], out: list[Any]) -> None:
    """Append `data`'s leaves to `out` in order; iterative, so any nesting the JSON parser
    accepts (1024 levels) flattens whatever Python's recursion limit is."""
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()


def _check_count(got: int, count: int, datatype: str, shape: tuple[int, ...], name: str) -> None:
    if got != count:
        raise ProtocolError(
            400,
            f"input '{name}' has {got} elements in 'data' but {datatype} {_fmt_shape(shape)} "
            f"needs {count}",
        )


def decode_bytes_tensor(
    chunk: bytes | memoryview, shape: tuple[int, ...], *, name: str
) -> np.ndarray[Any, Any]:
    """A BYTES tensor from its binary form: each element a 4-byte little-endian length + bytes."""
    count = math.prod(shape)
    view = memoryview(chunk)
    values: list[bytes] = []
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise ProtocolError(
                400, f"input '{name}' BYTES data ends inside a 4-byte length prefix"
            )
        (length,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if pos + length > len(view):
            raise ProtocolError(
                400,
                f"input '{name}' BYTES element #{len(values)} claims {length} bytes but only "
                f"{len(view) - pos} remain in its binary_data_size",
            )
        values.append(bytes(view[pos : pos + length]))
        pos += length
        if len(values) > count:
            break
    if len(values) != count:
        raise ProtocolError(
            400,
            f"input '{name}' BYTES data holds {len(values) if len(values) <= count else 'more'} "
            f"elements but shape {_fmt_shape(shape)} needs {count}",
        )
    out = np.empty(count, dtype=object)
    out[:] = values
    return out.reshape(shape)


def encode_bytes_tensor(array: np.ndarray[Any, Any]) -> bytes:
    """The binary form of a BYTES tensor (str elements are UTF-8 encoded)."""
    parts: list[bytes] = []
    for value in array.ravel():
        raw = value.encode() if isinstance(value, str) else bytes(value)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


# --------------------------------------------------------------------------- responses


def build_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    *,
    requested: Sequence[str] = (),
    binary: bool | Mapping[str, bool] = False,
    shared_memory: Collection[str] = (),
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer response.

    ``requested`` empty means every output, in the order of ``outputs``. ``binary`` says per
    output name (missing: JSON) or for all whether a tensor travels as binary data after the
    JSON header; with any binary tensor the ``Inference-Header-Content-Length`` header is set.
    ``shared_memory`` names the outputs already written into shared memory (see
    `write_shared_memory_outputs`): their entries carry name, datatype and shape only, as
    Triton's do (its C++ client, perf_analyzer's, reads any output's parameters as binary data).
    """
    names = list(requested) or list(outputs)
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in names:
        if name not in outputs:
            raise ProtocolError(
                400,
                f"requested output '{name}' is not an output of model '{model_name}': "
                f"its outputs are {', '.join(repr(n) for n in outputs)}",
            )
        array = np.asarray(outputs[name])
        datatype = _datatype_of_array(array)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype,
            "shape": [int(d) for d in array.shape],
        }
        if name in shared_memory:
            entries.append(entry)
            continue
        as_binary = binary if isinstance(binary, bool) else binary.get(name, False)
        data = None if as_binary else _json_data(array, datatype)
        if data is None:
            blob = _binary_data(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = orjson.dumps(doc)  # no NaN here: non-finite tensors travel as binary
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *blobs]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def write_shared_memory_outputs(
    request: InferRequest, outputs: Mapping[str, np.ndarray[Any, Any]]
) -> dict[str, dict[str, Any]]:
    """Write the outputs the request asked for in shared memory; where each went, by name.

    Raises `ProtocolError` (400) when an output is larger than the bytes its request set aside.
    """
    written: dict[str, dict[str, Any]] = {}
    for name, slot in request.shared_memory_outputs.items():
        array = outputs.get(name)
        if array is None:
            raise ProtocolError(
                500, f"the model produced no output '{name}' (it gave {list(outputs)})"
            )
        array = np.asarray(array)
        datatype = _datatype_of_array(array)
        if datatype in ("BYTES", "BOOL"):
            data: bytes | memoryview = _binary_data(array, datatype)
        else:  # the tensor's own bytes, copied once: straight into the region
            flat = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            data = flat.reshape(-1).view(np.uint8).data
        written[name] = slot.write(data)
    return written


def _json_data(array: np.ndarray[Any, Any], datatype: str) -> list[Any] | None:
    """JSON values for a tensor, or None when JSON cannot carry it and it must go binary."""
    if datatype == "BYTES":
        try:
            return [v if isinstance(v, str) else bytes(v).decode() for v in array.ravel()]
        except UnicodeDecodeError:
            return None  # not text: binary is the only faithful form
    if datatype in _FLOAT_TYPES:
        if not np.isfinite(array).all():
            return None  # NaN/Infinity are not JSON
        # every FP16/BF16 value is exact in float64, so JSON numbers carry them faithfully
        return array.astype(np.float64).ravel().tolist()
    return array.ravel().tolist()


def _binary_data(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_tensor(array)
    if datatype == "BOOL":
        return np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


# --------------------------------------------------------------------------- metadata, errors


def model_metadata(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The ``GET /v2/models/{m}`` answer; symbolic and unknown dims are -1."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [_tensor_metadata(spec) for spec in inputs],
        "outputs": [_tensor_metadata(spec) for spec in outputs],
    }


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    # v2 has no way to say "rank unknown"; a single -1 is what Triton shows for such tensors
    shape = [-1] if spec.shape is None else [_v2_dim(d) for d in spec.shape]
    return {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": shape}


SERVER_EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "system_shared_memory",
    "cuda_shared_memory",  # registering answers why not where there is no GPU or torch
)
"""Triton protocol extensions crossinfer implements in full (perf_analyzer reads this list)."""


def server_metadata() -> dict[str, Any]:
    """The ``GET /v2`` answer: server name, version and the extensions it implements."""
    from crossinfer import __version__

    return {"name": "crossinfer", "version": __version__, "extensions": list(SERVER_EXTENSIONS)}


def error_body(message: str) -> bytes:
    """The v2 error body, ``{"error": "<message>"}``."""
    return json.dumps({"error": message}).encode()


# --------------------------------------------------------------------------- small checks


def _v2_dim(dim: Dim) -> int:
    return dim if isinstance(dim, int) else -1


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _spec_str(spec: TensorSpec) -> str:
    shape = "[?]" if spec.shape is None else _fmt_shape([_v2_dim(d) for d in spec.shape])
    return f"{datatype_of(spec.dtype)} of shape {shape}"


def _mismatch(spec: TensorSpec, got: str) -> str:
    return f"model input '{spec.name}' expects {_spec_str(spec)}, got {got}"


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], datatype: str) -> None:
    if not shape_fits(spec.shape, shape):
        raise ProtocolError(400, _mismatch(spec, f"{datatype} {_fmt_shape(shape)}"))


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise ProtocolError(
            400, f"input '{name}' 'shape' must be a list of non-negative integers, got {raw!r}"
        )
    return tuple(raw)


def _object(raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError(400, f"{what} must be an object, got {_json_type(raw)}")
    return raw


def _uint(raw: Any, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ProtocolError(400, f"{what} must be a non-negative integer, got {raw!r}")
    return raw


def _bool(raw: Any, what: str) -> bool:
    if not isinstance(raw, bool):
        raise ProtocolError(400, f"{what} must be true or false, got {raw!r}")
    return raw


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
