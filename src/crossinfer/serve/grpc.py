"""The gRPC front end: Triton's `inference.GRPCInferenceService` over the model repository.

Inference requests are checked by the same parser as HTTP (`protocol.parse_infer_request`), so both
protocols refuse bad input with the same messages; answers always carry `raw_output_contents`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import json_format, message

from crossinfer.errors import CrossinferError, InputError, ProtocolError, ServingError
from crossinfer.model import TensorSpec
from crossinfer.serve import grpc_messages as pb
from crossinfer.serve.protocol import (
    DATATYPES,
    InferRequest,
    datatype_of,
    encode_bytes_tensor,
    parse_infer_document,
    server_metadata,
    write_shared_memory_outputs,
)
from crossinfer.serve.repository import READY, ModelRepository, ServedModel
from crossinfer.serve.server import GRPC_ENGINES
from crossinfer.serve.shm import CUDA, SYSTEM, SharedMemoryRegistry
from crossinfer.tensor_specs import shape_fits

if TYPE_CHECKING:
    from crossinfer.serve.grpc_core import CoreGrpcServer

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "GRPC_CODES",
    "GRPC_ENGINES",
    "MAX_DETAILS_CHARS",
    "GrpcServer",
    "bounded",
    "grpc_code",
    "start_grpc_server",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Largest request or response message; gRPC's own default (4 MiB) is too small for image batches."""

GRPC_CODES: Mapping[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The HTTP status a `ProtocolError` carries -> the gRPC status code Triton answers with."""


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC code for an HTTP status (other 4xx: INVALID_ARGUMENT, other 5xx: INTERNAL)."""
    code = GRPC_CODES.get(status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL


# --------------------------------------------------------------------------- requests


def _parameter_value(param: message.Message) -> Any:
    """The Python value of an InferParameter / ModelRepositoryParameter (None when unset)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def _parameters(entries: Mapping[str, message.Message]) -> dict[str, Any]:
    return {key: _parameter_value(value) for key, value in entries.items()}


# InferTensorContents field for each datatype that has one; FP16/BF16 have none (raw only)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _contents_bytes(tensor: Any) -> bytes:
    """The binary form of an input sent as typed InferTensorContents."""
    name, datatype = tensor.name, tensor.datatype
    contents = tensor.contents
    used = [f.name for f, _ in contents.ListFields()]
    field = _CONTENTS_FIELD.get(datatype)
    if datatype not in DATATYPES:
        return b""  # the shared parser names the datatype the model expects
    if field is None:
        raise ProtocolError(
            400,
            f"input '{name}' is {datatype}, which has no typed contents field: send it in "
            "raw_input_contents",
        )
    stray = [u for u in used if u != field]
    if stray:
        raise ProtocolError(
            400,
            f"input '{name}' is {datatype}: its values go in contents.{field}, got "
            f"{', '.join(stray)}",
        )
    values = getattr(contents, field)
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return encode_bytes_tensor(array)
    dtype = DATATYPES[datatype]
    wide = np.asarray(values)
    if datatype != "BOOL" and dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise ProtocolError(
                400,
                f"input '{name}' is {datatype}: values must lie in [{info.min}, {info.max}], "
                f"got {bad}",
            )
    return np.ascontiguousarray(wide, dtype=dtype.newbyteorder("<")).tobytes()


def _fits(spec: TensorSpec, datatype: str, shape: Sequence[int]) -> bool:
    """Whether the shared parser would accept this datatype and shape for ``spec``."""
    if datatype_of(spec.dtype) != datatype:
        return False
    return shape_fits(spec.shape, shape)


def _check_raw_size(spec: TensorSpec | None, tensor: Any, size: int) -> None:
    """A raw tensor of the wrong byte count, said in gRPC's words rather than binary_data_size."""
    datatype, shape = tensor.datatype, list(tensor.shape)
    if (
        spec is None
        or datatype in ("BYTES", "BOOL")
        or datatype not in DATATYPES
        or any(d < 0 for d in shape)
        or not _fits(spec, datatype, shape)
    ):
        return  # the shared parser has the better message for these
    expected = math.prod(shape) * DATATYPES[datatype].itemsize
    if size != expected:
        raise ProtocolError(
            400,
            f"input '{tensor.name}' has {size} bytes in raw_input_contents but {datatype} "
            f"[{','.join(str(d) for d in shape)}] needs {expected} bytes",
        )


def decode_infer_request(
    request: Any, model: ServedModel, shared_memory: SharedMemoryRegistry | None = None
) -> InferRequest:
    """A ModelInferRequest as an `InferRequest`, checked against the model like an HTTP request.

    The tensors are laid out as Triton's binary HTTP body (a JSON header, then the bytes) and
    handed to `parse_infer_request`: one parser, one set of error messages for both protocols.
    The raw bytes are copied once into that body; the arrays then borrow it. Inputs in shared
    memory (``shared_memory_region`` parameters) have no raw tensor: as in Triton,
    raw_input_contents holds one tensor per other input, in order.
    """
    raw = request.raw_input_contents
    in_memory = [t for t in request.inputs if "shared_memory_region" not in t.parameters]
    if raw and len(raw) != len(in_memory):
        shm = len(request.inputs) - len(in_memory)
        raise ProtocolError(
            400,
            f"raw_input_contents holds {len(raw)} tensors but the request names "
            f"{len(in_memory)} inputs"
            + (f" outside shared memory ({shm} are in shared memory)" if shm else "")
            + ": send one raw tensor per input, in the inputs' order",
        )
    specs = {spec.name: spec for spec in model.inputs}
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    index = 0
    for tensor in request.inputs:
        has_contents = tensor.HasField("contents")
        params = _parameters(tensor.parameters)
        if "shared_memory_region" in params:
            if has_contents:
                raise ProtocolError(
                    400,
                    f"input '{tensor.name}' names a shared memory region and also has "
                    "contents: send it one way",
                )
            entries.append(
                {
                    "name": tensor.name,
                    "datatype": tensor.datatype,
                    "shape": list(tensor.shape),
                    "parameters": params,
                }
            )
            continue
        if raw:
            if has_contents:
                raise ProtocolError(
                    400,
                    f"input '{tensor.name}' has contents while the request uses "
                    "raw_input_contents: send every input one way",
                )
            blob = bytes(raw[index])
            index += 1
            _check_raw_size(specs.get(tensor.name), tensor, len(blob))
        elif has_contents:
            blob = _contents_bytes(tensor)
        else:
            raise ProtocolError(
                400, f"input '{tensor.name}' has neither contents nor raw_input_contents"
            )
        params["binary_data_size"] = len(blob)
        entries.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "parameters": params,
            }
        )
        blobs.append(blob)
    header: dict[str, Any] = {
        "inputs": entries,
        "parameters": _parameters(request.parameters),
    }
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [
            {"name": out.name, "parameters": _parameters(out.parameters)} for out in request.outputs
        ]
    # the header goes to the shared parser as the dict it is (no JSON round trip); one copy
    # of the raw bytes, which the arrays then borrow
    binary = memoryview(blobs[0] if len(blobs) == 1 else b"".join(blobs))
    return parse_infer_document(
        header,
        binary,
        inputs=model.inputs,
        outputs=model.outputs,
        shared_memory=shared_memory,
    )


def _raw(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_tensor(array)
    if datatype == "BOOL":
        return np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_infer_response(
    model: ServedModel, request: InferRequest, outputs: Mapping[str, np.ndarray[Any, Any]]
) -> message.Message:
    """A ModelInferResponse with every tensor in raw_output_contents (what tritonclient reads).

    Outputs requested in shared memory are written there first; as in Triton, each keeps an
    (empty) raw_output_contents entry so the entries stay in step with the outputs, and carries
    name, datatype and shape only.
    """
    written = write_shared_memory_outputs(request, outputs) if request.shared_memory_outputs else {}
    response: Any = pb.new("ModelInferResponse", model_name=model.name, model_version=model.version)
    if request.id is not None:
        response.id = request.id
    for name in request.requested_outputs or tuple(outputs):
        array = outputs.get(name)
        if array is None:
            raise ProtocolError(
                500, f"model '{model.name}' produced no output '{name}' (it gave {list(outputs)})"
            )
        array = np.asarray(array)
        datatype = datatype_of(array.dtype.name)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(b"" if name in written else _raw(array, datatype))
    return response


# --------------------------------------------------------------------------- the service


MAX_DETAILS_CHARS = 2048
"""Longest error text a gRPC answer carries: it travels in the trailers, and a client refuses
metadata over its limit (8-16 KiB) with RESOURCE_EXHAUSTED, hiding the real error."""


def bounded(text: str, limit: int = MAX_DETAILS_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out (echoed input can be huge)."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text) - limit + 40} more characters)"


def _status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for an error raised while answering, as the HTTP front end maps it."""
    if isinstance(exc, ProtocolError):
        return grpc_code(exc.status), bounded(exc.message)
    if isinstance(exc, ServingError):
        return grpc.StatusCode.UNAVAILABLE, bounded(str(exc))
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc))
    return grpc.StatusCode.INTERNAL, bounded(str(exc))


def _failure(exc: Exception, rpc: str) -> tuple[grpc.StatusCode, str]:
    """The status a unary call answers when its handler raised `exc` (either engine)."""
    if isinstance(exc, (CrossinferError, ValueError)):
        return _status_of(exc)
    # a bug, not bad input: the client gets INTERNAL with the reason, the log the trace
    log.exception("gRPC %s failed", rpc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, bounded(f"{type(exc).__name__}: {exc}")


class _Unparseable:
    """A request frame that is not the RPC's protobuf message: answered, never raised.

    grpc.aio turns a deserializer's exception into UNKNOWN on a unary call and ends a stream
    (losing the answers still owed on it); as a value it becomes an error answer like any other.
    """

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _decoder(type_name: str) -> Callable[[bytes], Any]:
    from_string = pb.message_class(type_name).FromString

    def decode(data: bytes) -> Any:
        try:
            return from_string(data)
        except Exception as exc:  # DecodeError, or a RuntimeWarning-turned-error from upb
            return _Unparseable(
                bounded(
                    f"the {len(data)}-byte request is not a valid {type_name} message "
                    f"({type(exc).__name__}: {exc}): send a message of Triton's "
                    "grpc_service.proto"
                )
            )

    return decode


_Handler = Callable[[Any], Awaitable[message.Message]]


class _Service:
    """One handler per RPC of `grpc_messages.RPCS`; each maps crossinfer errors to gRPC codes."""

    def __init__(
        self,
        repository: ModelRepository,
        server_ready: Callable[[], bool],
        shared_memory: SharedMemoryRegistry,
    ) -> None:
        self._repository = repository
        self._server_ready = server_ready
        self._shm = shared_memory
        # the tasks answering calls now: a drain that times out cancels them with a reason
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._abort_reason: str | None = None

    def abort_in_flight(self, reason: str) -> int:
        """Answer every running call UNAVAILABLE with `reason` now (the drain timed out).

        Returns how many calls were running.
        """
        self._abort_reason = reason
        tasks = [t for t in self._in_flight if not t.done()]
        for task in tasks:
            task.cancel(reason)
        return len(tasks)

    def _aborting(self) -> str | None:
        """The drain's reason when this task was cancelled by `abort_in_flight`, else None."""
        if self._abort_reason is None:
            return None
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the cancellation is answered, not propagated
        return self._abort_reason

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        out: dict[str, grpc.RpcMethodHandler] = {}
        for rpc in pb.RPCS:
            decode = _decoder(rpc.request)
            if rpc.streaming:
                out[rpc.name] = grpc.stream_stream_rpc_method_handler(
                    self.ModelStreamInfer,
                    request_deserializer=decode,
                    response_serializer=_serialize,
                )
            else:
                out[rpc.name] = grpc.unary_unary_rpc_method_handler(
                    self._guarded(getattr(self, rpc.name)),
                    request_deserializer=decode,
                    response_serializer=_serialize,
                )
        return out

    def _guarded(
        self,
        handler: _Handler,
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[message.Message]]:
        in_flight = self._in_flight

        async def answer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Unparseable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
            task = asyncio.current_task()
            assert task is not None
            in_flight.add(task)
            try:
                return await handler(request)
            except asyncio.CancelledError:
                reason = self._aborting()
                if reason is None:
                    raise  # the client cancelled: nothing to answer
                await context.abort(grpc.StatusCode.UNAVAILABLE, reason)
            except Exception as exc:
                await context.abort(*_failure(exc, handler.__name__))
            finally:
                in_flight.discard(task)

        return answer

    def _model(self, name: str, version: str) -> ServedModel:
        return self._repository.get(name, version or None)

    # the RPCs, named as in the service so `handlers` can find them

    async def ServerLive(self, request: Any) -> message.Message:
        return pb.new("ServerLiveResponse", live=True)  # answering at all is being live

    async def ServerReady(self, request: Any) -> message.Message:
        return pb.new("ServerReadyResponse", ready=self._server_ready())

    async def ModelReady(self, request: Any) -> message.Message:
        try:
            ready = self._model(request.name, request.version).ready
        except ProtocolError:
            ready = False  # Triton answers "not ready" for an unknown model, not an error
        return pb.new("ModelReadyResponse", ready=ready)

    async def ServerMetadata(self, request: Any) -> message.Message:
        return _from_json("ServerMetadataResponse", server_metadata())

    async def ModelMetadata(self, request: Any) -> message.Message:
        doc = self._model(request.name, request.version).metadata()
        return _from_json("ModelMetadataResponse", doc)

    async def ModelConfig(self, request: Any) -> message.Message:
        doc = self._model(request.name, request.version).config()
        return _from_json("ModelConfigResponse", {"config": doc})

    async def ModelStatistics(self, request: Any) -> message.Message:
        if request.name:
            models = [self._model(request.name, request.version)]
        else:
            models = []
            for entry in self._repository.index():
                try:
                    models.append(self._model(entry["name"], ""))
                except ProtocolError:
                    continue  # listed but not loaded: Triton reports loaded models only
        return _from_json(
            "ModelStatisticsResponse", {"model_stats": [m.statistics() for m in models]}
        )

    async def RepositoryIndex(self, request: Any) -> message.Message:
        models = self._repository.index(ready_only=request.ready)
        keys = ("name", "version", "state", "reason")
        return _from_json(
            "RepositoryIndexResponse",
            {"models": [{k: str(m[k]) for k in keys if m.get(k) is not None} for m in models]},
        )

    async def RepositoryModelLoad(self, request: Any) -> message.Message:
        self._repository.check_client_control("load", request.model_name)
        if request.parameters:
            raise ProtocolError(
                400,
                f"load parameters ({', '.join(sorted(request.parameters))}) are not supported: "
                "put the model's settings in its config in the repository",
            )
        await self._repository.load(request.model_name)
        return pb.new("RepositoryModelLoadResponse")

    async def RepositoryModelUnload(self, request: Any) -> message.Message:
        self._repository.check_client_control("unload", request.model_name)
        await self._repository.unload(request.model_name)
        return pb.new("RepositoryModelUnloadResponse")

    async def ModelInfer(self, request: Any) -> message.Message:
        model = self._model(request.model_name, request.model_version)
        infer_request = decode_infer_request(request, model, self._shm)
        outputs = await model.infer(infer_request)
        return encode_infer_response(model, infer_request, outputs)

    async def SystemSharedMemoryStatus(self, request: Any) -> message.Message:
        regions = {r["name"]: r for r in self._shm.status(SYSTEM, request.name or None)}
        return _from_json("SystemSharedMemoryStatusResponse", {"regions": regions})

    async def SystemSharedMemoryRegister(self, request: Any) -> message.Message:
        self._shm.register_system(
            request.name, request.key, offset=request.offset, byte_size=request.byte_size
        )
        return pb.new("SystemSharedMemoryRegisterResponse")

    async def SystemSharedMemoryUnregister(self, request: Any) -> message.Message:
        self._shm.unregister(SYSTEM, request.name or None)
        return pb.new("SystemSharedMemoryUnregisterResponse")

    async def CudaSharedMemoryStatus(self, request: Any) -> message.Message:
        regions = {r["name"]: r for r in self._shm.status(CUDA, request.name or None)}
        return _from_json("CudaSharedMemoryStatusResponse", {"regions": regions})

    async def CudaSharedMemoryRegister(self, request: Any) -> message.Message:
        await self._shm.register_cuda(
            request.name,
            request.raw_handle,
            device_id=request.device_id,
            byte_size=request.byte_size,
        )
        return pb.new("CudaSharedMemoryRegisterResponse")

    async def CudaSharedMemoryUnregister(self, request: Any) -> message.Message:
        self._shm.unregister(CUDA, request.name or None)
        return pb.new("CudaSharedMemoryUnregisterResponse")

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[message.Message]:
        """Each frame answered as it completes, bad ones included: an error travels in-stream
        (``error_message``, as Triton's do) and the stream stays open for the next frame."""
        answers: asyncio.Queue[message.Message | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        def error_reply(text: str) -> message.Message:
            return pb.new("ModelStreamInferResponse", error_message=text)

        async def one(request: Any) -> None:
            if isinstance(request, _Unparseable):
                reply = error_reply(request.error)
            else:
                try:
                    result = await self.ModelInfer(request)
                    reply = pb.new("ModelStreamInferResponse", infer_response=result)
                except (CrossinferError, ValueError) as exc:
                    reply = error_reply(_status_of(exc)[1])
                except Exception as exc:  # a bug: this frame's answer says so, the others go on
                    log.exception("gRPC ModelStreamInfer failed on a frame")
                    reply = error_reply(bounded(f"internal error: {type(exc).__name__}: {exc}"))
            answers.put_nowait(reply)

        async def read() -> None:
            try:
                async for request in requests:
                    task = asyncio.create_task(one(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
            finally:
                # the client half-closed, or its side broke: every frame read is still answered
                while running:
                    await asyncio.gather(*running, return_exceptions=True)
                answers.put_nowait(None)

        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        reader = asyncio.create_task(read())
        try:
            while (reply := await answers.get()) is not None:
                yield reply
        except asyncio.CancelledError:
            reason = self._aborting()
            if reason is None:
                raise
            await context.abort(grpc.StatusCode.UNAVAILABLE, reason)
        finally:
            self._in_flight.discard(task)
            reader.cancel()
            for running_task in running:
                running_task.cancel()


def _serialize(msg: message.Message) -> bytes:
    data: bytes = msg.SerializeToString()
    return data


def _from_json(name: str, doc: Mapping[str, Any]) -> message.Message:
    """A message from the same JSON the HTTP front end answers with (Triton's field names)."""
    return json_format.ParseDict(doc, pb.new(name))


# --------------------------------------------------------------------------- the server


def _all_models_ready(repository: ModelRepository) -> Callable[[], bool]:
    def ready() -> bool:
        return all(entry["state"] == READY for entry in repository.index())

    return ready


class GrpcServer:
    """A started gRPC front end: `stop(grace_s)` and, for a drain that ran out of time,
    `abort_in_flight(reason)`."""

    engine = "aio"

    def __init__(self, server: grpc.aio.Server, service: _Service) -> None:
        self.server = server
        self._service = service

    async def stop(self, grace_s: float | None) -> None:
        """Refuse new calls; let running ones finish within `grace_s`, then cancel them."""
        await self.server.stop(grace_s)

    def abort_in_flight(self, reason: str) -> int:
        """Answer every running call UNAVAILABLE with `reason`; how many there were."""
        return self._service.abort_in_flight(reason)


async def start_grpc_server(
    repository: ModelRepository,
    host: str,
    port: int,
    *,
    server_ready: Callable[[], bool] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    shared_memory: SharedMemoryRegistry | None = None,
    engine: str = "core",
) -> GrpcServer | CoreGrpcServer:
    """Serve GRPCInferenceService on ``host:port`` from the running event loop, started.

    ``server_ready`` answers ServerReady (the HTTP front end's readiness, so both agree); by
    default the server is ready when every model in the repository is READY, as Triton's
    strict readiness has it.

    ``shared_memory`` holds the regions clients register (the HTTP front end's, so both share
    one namespace as in Triton); a fresh registry by default.

    ``engine``: "core" (default) drives grpc's C core from one poll thread and answers on the
    loop (`grpc_core`, falling back to grpc.aio where this grpcio lacks what it uses); "aio"
    is grpc.aio's server. Both answer the same RPCs through the same handlers.

    Stop it with ``await server.stop(grace_s)``: it refuses new calls and lets the running ones
    finish within the grace period.
    """
    if max_message_bytes < 1:
        raise ValueError(f"max_message_bytes must be >= 1, got {max_message_bytes}")
    if engine not in GRPC_ENGINES:
        raise ValueError(f"unknown gRPC engine {engine!r}: use one of {', '.join(GRPC_ENGINES)}")
    options = (
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    )
    service = _Service(
        repository,
        server_ready or _all_models_ready(repository),
        shared_memory if shared_memory is not None else SharedMemoryRegistry(),
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if engine == "core":
        from crossinfer.serve import grpc_core

        missing = grpc_core.available()
        if missing is None:
            return grpc_core.start_core_server(service, address, options)
        log.warning("gRPC: the core engine cannot run here (%s): using grpc.aio", missing)
    server = grpc.aio.server(options=list(options))
    handlers = service.handlers()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(pb.SERVICE, handlers),))
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
    await server.start()
    return GrpcServer(server, service)
