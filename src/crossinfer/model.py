"""ModelArtifact: one ONNX model loaded, validated and described (signature, opsets, ops, size, hash).

`load_model` takes a path or a `zoo:NAME` source; every way a file can be unusable ends in one
`ModelError` that names the file and the problem.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.external_data_helper

from crossinfer.errors import (
    ModelFormatError,
    ModelNotFoundError,
    ModelValidationError,
    UnsupportedOpsetError,
)
from crossinfer.onnx_graph import all_nodes

# Inputs of BatchNormalization that hold running statistics, not trained parameters:
# published parameter counts (torchvision, Hugging Face) leave them out.
_BN_STAT_INPUTS = (3, 4)
_DEFAULT_DOMAINS = ("", "ai.onnx")

Dim = int | str | None
"""One dimension of a tensor shape: a fixed size, a symbolic name (``"batch"``) or unknown."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of one model input or output."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int64"; "bfloat16" has no numpy twin
    shape: tuple[Dim, ...] | None  # None: rank unknown
    onnx_type: int  # onnx.TensorProto data type

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    def shape_str(self) -> str:
        if self.shape is None:
            return "[?]"
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


@dataclass(frozen=True)
class ModelArtifact:
    """An ONNX model on disk, validated, with what every stage needs to know about it."""

    path: Path
    source: str  # what the user typed: a path or "zoo:resnet50"
    sha256: str  # of the model file and its external data, in a fixed order
    file_size: int  # bytes, external data included
    ir_version: int
    opsets: Mapping[str, int]  # domain ("" is the default ONNX domain) -> version
    producer: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_histogram: Mapping[str, int]  # "Conv" or "com.microsoft.Attention" -> count
    node_count: int
    parameter_count: int
    external_data: tuple[str, ...] = ()
    proto: onnx.ModelProto | None = field(default=None, repr=False, compare=False)
    # the framework model this ONNX file was exported from (a torch nn.Module), kept as-is for
    # its own backend; every other backend runs the ONNX file
    native: Any = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.source

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def load_proto(self) -> onnx.ModelProto:
        """The full model, external data included (read again from disk when not kept)."""
        if self.proto is not None:
            return self.proto
        return onnx.load(str(self.path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": str(self.path),
            "sha256": self.sha256,
            "file_size": self.file_size,
            "ir_version": self.ir_version,
            "opsets": dict(self.opsets),
            "producer": self.producer,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "op_histogram": dict(self.op_histogram),
            "node_count": self.node_count,
            "parameter_count": self.parameter_count,
            "external_data": list(self.external_data),
        }


def load_model(source: str | os.PathLike[str], *, keep_proto: bool = False) -> ModelArtifact:
    """Load, validate and describe a model from a path or a ``zoo:NAME`` source.

    A TensorFlow SavedModel directory or a Keras ``.keras`` file is converted to ONNX first
    (`crossinfer.sources.tensorflow`: tf2onnx, its parity checked, cached).
    """
    text = os.fspath(source)
    if text.startswith("zoo:"):
        from crossinfer.zoo import zoo_model_path

        path = zoo_model_path(text)
    else:
        path = Path(text)
        from crossinfer.sources.tensorflow import is_tensorflow_source

        if is_tensorflow_source(path):
            from crossinfer.sources.tensorflow import from_tensorflow

            return from_tensorflow(path, source=text, keep_proto=keep_proto)
    return _load_path(path, source=text, keep_proto=keep_proto)


def _load_path(path: Path, *, source: str, keep_proto: bool) -> ModelArtifact:
    if not path.exists():
        raise ModelNotFoundError(f"model file '{path}' does not exist: check the path")
    if path.is_dir():
        raise ModelFormatError(
            f"'{path}' is a directory: give the path of an .onnx file (or of a TensorFlow "
            "SavedModel directory, which holds saved_model.pb)"
        )
    size = path.stat().st_size
    if size == 0:
        raise ModelFormatError(
            f"model file '{path}' is empty (0 bytes): re-export or re-download it"
        )

    # Parse without external data first: a protobuf error here means the file itself is bad.
    try:
        header = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or ValueError
        raise ModelFormatError(
            f"model file '{path}' is not a readable ONNX model ({size} bytes; "
            f"it may be truncated, corrupt, or another format): {_first_line(exc)}"
        ) from exc
    if not header.HasField("graph") or header.ir_version == 0:
        raise ModelFormatError(
            f"model file '{path}' parsed but holds no ONNX graph or IR version: "
            "it is probably not an ONNX model"
        )

    _check_versions(path, header)
    external = _external_files(path, header)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelValidationError(
            f"model file '{path}' is not a valid ONNX model: {_first_line(exc)}"
        ) from exc
    except onnx.shape_inference.InferenceError as exc:
        raise ModelValidationError(
            f"model file '{path}' fails ONNX shape inference: {_first_line(exc)}"
        ) from exc

    proto = onnx.load(str(path)) if keep_proto else None
    opsets = {op.domain: op.version for op in header.opset_import}
    return ModelArtifact(
        path=path.resolve(),
        source=source,
        sha256=_content_hash(path, external),
        file_size=size + sum(p.stat().st_size for p in external),
        ir_version=header.ir_version,
        opsets=opsets,
        producer=" ".join(p for p in (header.producer_name, header.producer_version) if p),
        inputs=_graph_inputs(header.graph),
        outputs=tuple(_tensor_spec(v) for v in header.graph.output),
        op_histogram=_op_histogram(header.graph),
        node_count=sum(1 for _ in all_nodes(header.graph)),
        parameter_count=count_parameters(header),
        external_data=tuple(p.name for p in external),
        proto=proto,
    )


def _check_versions(path: Path, model: onnx.ModelProto) -> None:
    supported_ir = onnx.IR_VERSION
    if model.ir_version > supported_ir:
        raise UnsupportedOpsetError(
            f"model file '{path}' has IR version {model.ir_version}, newer than the installed "
            f"onnx {onnx.__version__} supports ({supported_ir}): upgrade onnx "
            "(pip install -U onnx) or re-export the model with an older IR version"
        )
    latest = onnx.defs.onnx_opset_version()
    for op in model.opset_import:
        if op.domain in _DEFAULT_DOMAINS and op.version > latest:
            raise UnsupportedOpsetError(
                f"model file '{path}' uses opset {op.version}, newer than the installed onnx "
                f"{onnx.__version__} knows (up to {latest}): upgrade onnx (pip install -U onnx) "
                f"or re-export the model with opset <= {latest}"
            )


def _external_files(path: Path, model: onnx.ModelProto) -> list[Path]:
    names: list[str] = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            if info.location not in names:
                names.append(info.location)
    files = [path.parent / name for name in sorted(names)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise ModelFormatError(
            f"model file '{path}' keeps its weights in external data that is missing: "
            f"{', '.join(missing)}: copy those files next to the model"
        )
    return files


def _content_hash(path: Path, external: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in [path, *external]:
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _graph_inputs(graph: onnx.GraphProto) -> tuple[TensorSpec, ...]:
    # Before IR 4 initializers were listed as inputs too; they are weights, not feeds.
    weights = {init.name for init in graph.initializer}
    return tuple(_tensor_spec(v) for v in graph.input if v.name not in weights)


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    elem = tensor_type.elem_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
    except (KeyError, TypeError, ValueError):
        dtype = onnx.TensorProto.DataType.Name(elem).lower() if elem else "unknown"
    if elem == onnx.TensorProto.BFLOAT16:
        dtype = "bfloat16"
    shape: tuple[Dim, ...] | None = None
    if tensor_type.HasField("shape"):
        dims: list[Dim] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorSpec(name=value.name, dtype=dtype, shape=shape, onnx_type=elem)


def _op_histogram(graph: onnx.GraphProto) -> dict[str, int]:
    counts = collections.Counter(
        node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
        for node in all_nodes(graph)
    )
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def count_parameters(model: onnx.ModelProto) -> int:
    """Trainable parameters: elements of floating-point initializers, BN running stats excluded."""
    stats: set[str] = set()
    for node in all_nodes(model.graph):
        if node.op_type == "BatchNormalization":
            stats.update(node.input[i] for i in _BN_STAT_INPUTS if i < len(node.input))
    total = 0
    for init in model.graph.initializer:
        if init.name in stats:
            continue
        if np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).kind != "f":
            continue
        total += int(np.prod(init.dims, dtype=np.int64)) if init.dims else 1
    return total


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 300 else line[:297] + "..."
