"""Triton's `inference` gRPC messages (grpc_service.proto, model_config.proto), described in Python.

Field names and numbers follow Triton's protocol so unmodified tritonclient and perf_analyzer talk
to us; the descriptor is built at import, so there is no generated code and no protoc at run time.
It lives in a private descriptor pool: a process that also imports tritonclient's own generated
`inference.*` messages (the tests do) sees no clash.

Only what a KServe v2 server answers is described: the trace and log-settings RPCs and the ModelConfig sections crossinfer never fills (sequence batching, ensembles, warm-up,
optimization policies) are left out; protobuf keeps unknown fields a client sends, so leaving them
out loses nothing on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

__all__ = ["PACKAGE", "RPCS", "SERVICE", "Rpc", "message_class", "new"]

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
_BOOL, _STRING, _BYTES = _F.TYPE_BOOL, _F.TYPE_STRING, _F.TYPE_BYTES
_INT32, _INT64, _UINT32, _UINT64 = _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64
_FLOAT, _DOUBLE = _F.TYPE_FLOAT, _F.TYPE_DOUBLE
_MESSAGE, _ENUM = _F.TYPE_MESSAGE, _F.TYPE_ENUM


@dataclass(frozen=True)
class _Field:
    name: str
    number: int
    type: int
    ref: str = ""  # message or enum type for _MESSAGE/_ENUM, relative to the package
    repeated: bool = False
    oneof: str = ""


@dataclass(frozen=True)
class _Message:
    name: str
    fields: tuple[_Field, ...] = ()
    nested: tuple[_Message, ...] = ()
    enums: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, values numbered 0..n-1)
    map_entry: bool = False


def _f(name: str, number: int, type_: int, ref: str = "", oneof: str = "") -> _Field:
    return _Field(name, number, type_, ref, oneof=oneof)


def _rep(name: str, number: int, type_: int, ref: str = "") -> _Field:
    return _Field(name, number, type_, ref, repeated=True)


def _map(
    owner: str, name: str, number: int, key: int, value: int, ref: str = ""
) -> tuple[_Field, _Message]:
    """A proto3 `map<key, value>` field: a repeated nested `<Name>Entry` message."""
    entry = "".join(part.title() for part in name.split("_")) + "Entry"
    field = _Field(name, number, _MESSAGE, f"{owner}.{entry}", repeated=True)
    return field, _Message(entry, (_f("key", 1, key), _f("value", 2, value, ref)), map_entry=True)


def _with_maps(
    name: str,
    fields: tuple[_Field, ...],
    maps: tuple[tuple[str, int, int, int, str], ...],
    nested: tuple[_Message, ...] = (),
    enums: tuple[tuple[str, tuple[str, ...]], ...] = (),
) -> _Message:
    """A message whose map fields ``(name, number, key type, value type, value ref)`` are added."""
    built = [_map(name, *spec) for spec in maps]
    return _Message(
        name,
        fields + tuple(field for field, _ in built),
        nested + tuple(entry for _, entry in built),
        enums,
    )


def _tensor_metadata() -> _Message:
    return _Message(
        "TensorMetadata",
        (_f("name", 1, _STRING), _f("datatype", 2, _STRING), _rep("shape", 3, _INT64)),
    )


_PARAMS = ("parameters", 4, _STRING, _MESSAGE, "InferParameter")

# --------------------------------------------------------------------------- grpc_service.proto

_SERVICE_MESSAGES: tuple[_Message, ...] = (
    _Message("ServerLiveRequest"),
    _Message("ServerLiveResponse", (_f("live", 1, _BOOL),)),
    _Message("ServerReadyRequest"),
    _Message("ServerReadyResponse", (_f("ready", 1, _BOOL),)),
    _Message("ModelReadyRequest", (_f("name", 1, _STRING), _f("version", 2, _STRING))),
    _Message("ModelReadyResponse", (_f("ready", 1, _BOOL),)),
    _Message("ServerMetadataRequest"),
    _Message(
        "ServerMetadataResponse",
        (_f("name", 1, _STRING), _f("version", 2, _STRING), _rep("extensions", 3, _STRING)),
    ),
    _Message("ModelMetadataRequest", (_f("name", 1, _STRING), _f("version", 2, _STRING))),
    _Message(
        "ModelMetadataResponse",
        (
            _f("name", 1, _STRING),
            _rep("versions", 2, _STRING),
            _f("platform", 3, _STRING),
            _rep("inputs", 4, _MESSAGE, "ModelMetadataResponse.TensorMetadata"),
            _rep("outputs", 5, _MESSAGE, "ModelMetadataResponse.TensorMetadata"),
        ),
        nested=(_tensor_metadata(),),
    ),
    _Message(
        "InferParameter",
        (
            _f("bool_param", 1, _BOOL, oneof="parameter_choice"),
            _f("int64_param", 2, _INT64, oneof="parameter_choice"),
            _f("string_param", 3, _STRING, oneof="parameter_choice"),
            _f("double_param", 4, _DOUBLE, oneof="parameter_choice"),
            _f("uint64_param", 5, _UINT64, oneof="parameter_choice"),
        ),
    ),
    _Message(
        "InferTensorContents",
        (
            _rep("bool_contents", 1, _BOOL),
            _rep("int_contents", 2, _INT32),
            _rep("int64_contents", 3, _INT64),
            _rep("uint_contents", 4, _UINT32),
            _rep("uint64_contents", 5, _UINT64),
            _rep("fp32_contents", 6, _FLOAT),
            _rep("fp64_contents", 7, _DOUBLE),
            _rep("bytes_contents", 8, _BYTES),
        ),
    ),
    _with_maps(
        "ModelInferRequest",
        (
            _f("model_name", 1, _STRING),
            _f("model_version", 2, _STRING),
            _f("id", 3, _STRING),
            _rep("inputs", 5, _MESSAGE, "ModelInferRequest.InferInputTensor"),
            _rep("outputs", 6, _MESSAGE, "ModelInferRequest.InferRequestedOutputTensor"),
            _rep("raw_input_contents", 7, _BYTES),
        ),
        (_PARAMS,),
        nested=(
            _with_maps(
                "ModelInferRequest.InferInputTensor",
                (
                    _f("name", 1, _STRING),
                    _f("datatype", 2, _STRING),
                    _rep("shape", 3, _INT64),
                    _f("contents", 5, _MESSAGE, "InferTensorContents"),
                ),
                (_PARAMS,),
            ),
            _with_maps(
                "ModelInferRequest.InferRequestedOutputTensor",
                (_f("name", 1, _STRING),),
                (("parameters", 2, _STRING, _MESSAGE, "InferParameter"),),
            ),
        ),
    ),
    _with_maps(
        "ModelInferResponse",
        (
            _f("model_name", 1, _STRING),
            _f("model_version", 2, _STRING),
            _f("id", 3, _STRING),
            _rep("outputs", 5, _MESSAGE, "ModelInferResponse.InferOutputTensor"),
            _rep("raw_output_contents", 6, _BYTES),
        ),
        (_PARAMS,),
        nested=(
            _with_maps(
                "ModelInferResponse.InferOutputTensor",
                (
                    _f("name", 1, _STRING),
                    _f("datatype", 2, _STRING),
                    _rep("shape", 3, _INT64),
                    _f("contents", 5, _MESSAGE, "InferTensorContents"),
                ),
                (_PARAMS,),
            ),
        ),
    ),
    _Message(
        "ModelStreamInferResponse",
        (
            _f("error_message", 1, _STRING),
            _f("infer_response", 2, _MESSAGE, "ModelInferResponse"),
        ),
    ),
    _Message("ModelConfigRequest", (_f("name", 1, _STRING), _f("version", 2, _STRING))),
    _Message("ModelConfigResponse", (_f("config", 1, _MESSAGE, "ModelConfig"),)),
    _Message("ModelStatisticsRequest", (_f("name", 1, _STRING), _f("version", 2, _STRING))),
    _Message("StatisticDuration", (_f("count", 1, _UINT64), _f("ns", 2, _UINT64))),
    _Message(
        "InferStatistics",
        tuple(
            _f(name, number, _MESSAGE, "StatisticDuration")
            for number, name in enumerate(
                (
                    "success",
                    "fail",
                    "queue",
                    "compute_input",
                    "compute_infer",
                    "compute_output",
                    "cache_hit",
                    "cache_miss",
                ),
                start=1,
            )
        ),
    ),
    _Message(
        "InferBatchStatistics",
        (
            _f("batch_size", 1, _UINT64),
            _f("compute_input", 2, _MESSAGE, "StatisticDuration"),
            _f("compute_infer", 3, _MESSAGE, "StatisticDuration"),
            _f("compute_output", 4, _MESSAGE, "StatisticDuration"),
        ),
    ),
    _Message(
        "MemoryUsage",
        (_f("type", 1, _STRING), _f("id", 2, _INT64), _f("byte_size", 3, _UINT64)),
    ),
    _Message(
        "ModelStatistics",
        (
            _f("name", 1, _STRING),
            _f("version", 2, _STRING),
            _f("last_inference", 3, _UINT64),
            _f("inference_count", 4, _UINT64),
            _f("execution_count", 5, _UINT64),
            _f("inference_stats", 6, _MESSAGE, "InferStatistics"),
            _rep("batch_stats", 7, _MESSAGE, "InferBatchStatistics"),
            _rep("memory_usage", 8, _MESSAGE, "MemoryUsage"),
        ),
    ),
    _Message("ModelStatisticsResponse", (_rep("model_stats", 1, _MESSAGE, "ModelStatistics"),)),
    _Message(
        "ModelRepositoryParameter",
        (
            _f("bool_param", 1, _BOOL, oneof="parameter_choice"),
            _f("int64_param", 2, _INT64, oneof="parameter_choice"),
            _f("string_param", 3, _STRING, oneof="parameter_choice"),
            _f("bytes_param", 4, _BYTES, oneof="parameter_choice"),
        ),
    ),
    _Message("RepositoryIndexRequest", (_f("repository_name", 1, _STRING), _f("ready", 2, _BOOL))),
    _Message(
        "RepositoryIndexResponse",
        (_rep("models", 1, _MESSAGE, "RepositoryIndexResponse.ModelIndex"),),
        nested=(
            _Message(
                "ModelIndex",
                (
                    _f("name", 1, _STRING),
                    _f("version", 2, _STRING),
                    _f("state", 3, _STRING),
                    _f("reason", 4, _STRING),
                ),
            ),
        ),
    ),
    *(
        _with_maps(
            f"RepositoryModel{verb}Request",
            (_f("repository_name", 1, _STRING), _f("model_name", 2, _STRING)),
            (("parameters", 3, _STRING, _MESSAGE, "ModelRepositoryParameter"),),
        )
        for verb in ("Load", "Unload")
    ),
    _Message("RepositoryModelLoadResponse"),
    _Message("RepositoryModelUnloadResponse"),
    # the shared-memory extensions
    _Message("SystemSharedMemoryStatusRequest", (_f("name", 1, _STRING),)),
    _with_maps(
        "SystemSharedMemoryStatusResponse",
        (),
        (("regions", 1, _STRING, _MESSAGE, "SystemSharedMemoryStatusResponse.RegionStatus"),),
        nested=(
            _Message(
                "RegionStatus",
                (
                    _f("name", 1, _STRING),
                    _f("key", 2, _STRING),
                    _f("offset", 3, _UINT64),
                    _f("byte_size", 4, _UINT64),
                ),
            ),
        ),
    ),
    _Message(
        "SystemSharedMemoryRegisterRequest",
        (
            _f("name", 1, _STRING),
            _f("key", 2, _STRING),
            _f("offset", 3, _UINT64),
            _f("byte_size", 4, _UINT64),
        ),
    ),
    _Message("SystemSharedMemoryRegisterResponse"),
    _Message("SystemSharedMemoryUnregisterRequest", (_f("name", 1, _STRING),)),
    _Message("SystemSharedMemoryUnregisterResponse"),
    _Message("CudaSharedMemoryStatusRequest", (_f("name", 1, _STRING),)),
    _with_maps(
        "CudaSharedMemoryStatusResponse",
        (),
        (("regions", 1, _STRING, _MESSAGE, "CudaSharedMemoryStatusResponse.RegionStatus"),),
        nested=(
            _Message(
                "RegionStatus",
                (
                    _f("name", 1, _STRING),
                    _f("device_id", 2, _UINT64),
                    _f("byte_size", 3, _UINT64),
                ),
            ),
        ),
    ),
    _Message(
        "CudaSharedMemoryRegisterRequest",
        (
            _f("name", 1, _STRING),
            _f("raw_handle", 2, _BYTES),
            _f("device_id", 3, _INT64),
            _f("byte_size", 4, _UINT64),
        ),
    ),
    _Message("CudaSharedMemoryRegisterResponse"),
    _Message("CudaSharedMemoryUnregisterRequest", (_f("name", 1, _STRING),)),
    _Message("CudaSharedMemoryUnregisterResponse"),
)

# --------------------------------------------------------------------------- model_config.proto

_DATA_TYPES = (
    "TYPE_INVALID",
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
)

_CONFIG_MESSAGES: tuple[_Message, ...] = (
    _Message(
        "ModelInstanceGroup",
        (
            _f("name", 1, _STRING),
            _f("count", 2, _INT32),
            _rep("gpus", 3, _INT32),
            _f("kind", 4, _ENUM, "ModelInstanceGroup.Kind"),
            _rep("profile", 5, _STRING),
            _f("passive", 7, _BOOL),
            _f("host_policy", 9, _STRING),
        ),
        enums=(("Kind", ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")),),
    ),
    _Message("ModelTensorReshape", (_rep("shape", 1, _INT64),)),
    _Message(
        "ModelInput",
        (
            _f("name", 1, _STRING),
            _f("data_type", 2, _ENUM, "DataType"),
            _f("format", 3, _ENUM, "ModelInput.Format"),
            _rep("dims", 4, _INT64),
            _f("reshape", 5, _MESSAGE, "ModelTensorReshape"),
            _f("is_shape_tensor", 6, _BOOL),
            _f("allow_ragged_batch", 7, _BOOL),
            _f("optional", 8, _BOOL),
        ),
        enums=(("Format", ("FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW")),),
    ),
    _Message(
        "ModelOutput",
        (
            _f("name", 1, _STRING),
            _f("data_type", 2, _ENUM, "DataType"),
            _rep("dims", 3, _INT64),
            _f("label_filename", 4, _STRING),
            _f("reshape", 5, _MESSAGE, "ModelTensorReshape"),
            _f("is_shape_tensor", 6, _BOOL),
        ),
    ),
    _Message(
        "ModelVersionPolicy",
        (
            _f("latest", 1, _MESSAGE, "ModelVersionPolicy.Latest", oneof="policy_choice"),
            _f("all", 2, _MESSAGE, "ModelVersionPolicy.All", oneof="policy_choice"),
            _f("specific", 3, _MESSAGE, "ModelVersionPolicy.Specific", oneof="policy_choice"),
        ),
        nested=(
            _Message("Latest", (_f("num_versions", 1, _UINT32),)),
            _Message("All"),
            _Message("Specific", (_rep("versions", 1, _INT64),)),
        ),
    ),
    _Message(
        "ModelQueuePolicy",
        (
            _f("timeout_action", 1, _ENUM, "ModelQueuePolicy.TimeoutAction"),
            _f("default_timeout_microseconds", 2, _UINT64),
            _f("allow_timeout_override", 3, _BOOL),
            _f("max_queue_size", 4, _UINT32),
        ),
        enums=(("TimeoutAction", ("REJECT", "DELAY")),),
    ),
    _with_maps(
        "ModelDynamicBatching",
        (
            _rep("preferred_batch_size", 1, _INT32),
            _f("max_queue_delay_microseconds", 2, _UINT64),
            _f("preserve_ordering", 3, _BOOL),
            _f("priority_levels", 4, _UINT64),
            _f("default_priority_level", 5, _UINT64),
            _f("default_queue_policy", 6, _MESSAGE, "ModelQueuePolicy"),
        ),
        (("priority_queue_policy", 7, _UINT64, _MESSAGE, "ModelQueuePolicy"),),
    ),
    _Message("ModelParameter", (_f("string_value", 1, _STRING),)),
    _Message("ModelTransactionPolicy", (_f("decoupled", 1, _BOOL),)),
    _Message("ModelResponseCache", (_f("enable", 1, _BOOL),)),
    _with_maps(
        "ModelConfig",
        (
            _f("name", 1, _STRING),
            _f("platform", 2, _STRING),
            _f("version_policy", 3, _MESSAGE, "ModelVersionPolicy"),
            _f("max_batch_size", 4, _INT32),
            _rep("input", 5, _MESSAGE, "ModelInput"),
            _rep("output", 6, _MESSAGE, "ModelOutput"),
            _rep("instance_group", 7, _MESSAGE, "ModelInstanceGroup"),
            _f("default_model_filename", 8, _STRING),
            _f("dynamic_batching", 11, _MESSAGE, "ModelDynamicBatching", "scheduling_choice"),
            _f("backend", 17, _STRING),
            _f("model_transaction_policy", 19, _MESSAGE, "ModelTransactionPolicy"),
            _f("response_cache", 24, _MESSAGE, "ModelResponseCache"),
        ),
        (
            ("metric_tags", 10, _STRING, _STRING, ""),
            ("parameters", 14, _STRING, _MESSAGE, "ModelParameter"),
        ),
    ),
)


@dataclass(frozen=True)
class Rpc:
    """One unary (or bidirectional streaming) method of GRPCInferenceService."""

    name: str
    request: str
    response: str
    streaming: bool = False


RPCS: tuple[Rpc, ...] = (
    Rpc("ServerLive", "ServerLiveRequest", "ServerLiveResponse"),
    Rpc("ServerReady", "ServerReadyRequest", "ServerReadyResponse"),
    Rpc("ModelReady", "ModelReadyRequest", "ModelReadyResponse"),
    Rpc("ServerMetadata", "ServerMetadataRequest", "ServerMetadataResponse"),
    Rpc("ModelMetadata", "ModelMetadataRequest", "ModelMetadataResponse"),
    Rpc("ModelInfer", "ModelInferRequest", "ModelInferResponse"),
    Rpc("ModelStreamInfer", "ModelInferRequest", "ModelStreamInferResponse", streaming=True),
    Rpc("ModelConfig", "ModelConfigRequest", "ModelConfigResponse"),
    Rpc("ModelStatistics", "ModelStatisticsRequest", "ModelStatisticsResponse"),
    Rpc("RepositoryIndex", "RepositoryIndexRequest", "RepositoryIndexResponse"),
    Rpc("RepositoryModelLoad", "RepositoryModelLoadRequest", "RepositoryModelLoadResponse"),
    Rpc("RepositoryModelUnload", "RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse"),
    *(
        Rpc(
            f"{kind}SharedMemory{verb}",
            f"{kind}SharedMemory{verb}Request",
            f"{kind}SharedMemory{verb}Response",
        )
        for kind in ("System", "Cuda")
        for verb in ("Status", "Register", "Unregister")
    ),
)
"""The methods crossinfer serves; `grpc.py` binds a handler to each."""


# --------------------------------------------------------------------------- building


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _message_proto(spec: _Message) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto(name=_short(spec.name))
    if spec.map_entry:
        proto.options.map_entry = True
    oneofs: list[str] = []
    for field in spec.fields:
        fp = proto.field.add(
            name=field.name,
            number=field.number,
            type=field.type,
            label=_F.LABEL_REPEATED if field.repeated else _F.LABEL_OPTIONAL,
            json_name=field.name,  # Triton's JSON keeps the proto field names
        )
        if field.ref:
            fp.type_name = f".{PACKAGE}.{field.ref}"
        if field.oneof:
            if field.oneof not in oneofs:
                oneofs.append(field.oneof)
                proto.oneof_decl.add(name=field.oneof)
            fp.oneof_index = oneofs.index(field.oneof)
    for enum_name, values in spec.enums:
        enum = proto.enum_type.add(name=enum_name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    proto.nested_type.extend(_message_proto(nested) for nested in spec.nested)
    return proto


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="crossinfer/serve/inference.proto", package=PACKAGE, syntax="proto3"
    )
    data_type = fdp.enum_type.add(name="DataType")
    for number, value in enumerate(_DATA_TYPES):
        data_type.value.add(name=value, number=number)
    fdp.message_type.extend(_message_proto(m) for m in _SERVICE_MESSAGES + _CONFIG_MESSAGES)
    service = fdp.service.add(name=_short(SERVICE))
    for rpc in RPCS:
        service.method.add(
            name=rpc.name,
            input_type=f".{PACKAGE}.{rpc.request}",
            output_type=f".{PACKAGE}.{rpc.response}",
            client_streaming=rpc.streaming,
            server_streaming=rpc.streaming,
        )
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_proto())
_CLASSES: dict[str, type[message.Message]] = {}


def message_class(name: str) -> type[message.Message]:
    """The message class for ``inference.<name>`` ("ModelInferRequest", "ModelConfig", ...)."""
    cls = _CLASSES.get(name)
    if cls is None:
        cls = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        _CLASSES[name] = cls
    return cls


def new(type_name: str, /, **fields: Any) -> message.Message:
    """A new ``inference.<type_name>`` message with ``fields`` set."""
    return message_class(type_name)(**fields)
