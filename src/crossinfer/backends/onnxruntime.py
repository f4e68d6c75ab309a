"""ONNX Runtime backend: every execution provider the installed onnxruntime reports.

Node placement comes from ORT's own record of which provider each (optimized) node went to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime as ort

from crossinfer.backends.base import (
    Compatibility,
    DeviceInfo,
    Placement,
    Precision,
    SessionOptions,
    Target,
    validate_feeds,
)
from crossinfer.errors import (
    CompileError,
    DeviceUnavailableError,
    InferenceError,
    InputError,
    UsageError,
    short_message,
)
from crossinfer.model import ModelArtifact

# crossinfer device name -> ORT execution provider. Azure is a remote-call EP, not a device.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "cann": "CANNExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
    "acl": "ACLExecutionProvider",
}
_INSTALL_HINTS = {
    "cuda": "pip install onnxruntime-gpu (with a matching CUDA and cuDNN)",
    "tensorrt": "pip install onnxruntime-gpu and TensorRT",
    "openvino": "pip install onnxruntime-openvino",
    "dml": "pip install onnxruntime-directml (Windows)",
    "qnn": "pip install onnxruntime-qnn (Windows on Snapdragon)",
}
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NO_KERNEL = re.compile(
    r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'"
)
_NOT_REGISTERED = re.compile(r"([\w.]+:)?(\w+)\((-?\d+)\) is not a registered function/op")
_ASSIGNMENT_KEY = "session.record_ep_graph_assignment_info"


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def version(self) -> str:
        return str(ort.__version__)

    def devices(self) -> list[DeviceInfo]:
        available = set(ort.get_available_providers())
        found = [
            DeviceInfo(name=device, description=provider)
            for device, provider in PROVIDERS.items()
            if provider in available
        ]
        for device in ("cuda", "tensorrt"):
            if PROVIDERS[device] not in available:
                found.append(
                    DeviceInfo(
                        name=device,
                        description=PROVIDERS[device],
                        available=False,
                        reason=f"onnxruntime {ort.__version__} has no {PROVIDERS[device]}: "
                        f"{_INSTALL_HINTS[device]}",
                    )
                )
        return found

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility:
        provider = PROVIDERS.get(device)
        if provider is None:
            return Compatibility(False, f"onnxruntime knows no device '{device}'")
        if provider not in ort.get_available_providers():
            hint = _INSTALL_HINTS.get(device, "install an onnxruntime build with it")
            return Compatibility(False, f"{provider} is not in this onnxruntime build: {hint}")
        return Compatibility(True)

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> OnnxRuntimeSession:
        options = options or SessionOptions()
        provider = PROVIDERS.get(device)
        if provider is None:
            known = ", ".join(d.name for d in self.devices() if d.available)
            raise UsageError(f"onnxruntime has no device '{device}': available here: {known}")
        if provider not in ort.get_available_providers():
            raise DeviceUnavailableError(
                f"{provider} is not in onnxruntime {ort.__version__}: "
                f"{_INSTALL_HINTS.get(device, 'install an onnxruntime build with it')}"
            )
        return OnnxRuntimeSession(artifact, device, provider, options)


class OnnxRuntimeSession:
    def __init__(
        self, artifact: ModelArtifact, device: str, provider: str, options: SessionOptions
    ) -> None:
        self.target = Target("onnxruntime", device)
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self._model = artifact.source
        self._provider = provider
        self._ignored: list[str] = []
        so = ort.SessionOptions()
        so.log_severity_level = 3  # errors only: warnings about unused initializers flood stderr
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
        if options.graph_optimization_level is not None:
            try:
                so.graph_optimization_level = _OPT_LEVELS[options.graph_optimization_level]
            except KeyError:
                raise UsageError(
                    f"graph optimization level '{options.graph_optimization_level}' is not one of "
                    f"{', '.join(_OPT_LEVELS)}"
                ) from None
        # Older onnxruntime releases do not record node assignment at all.
        self._records_placement = hasattr(
            ort.InferenceSession, "get_provider_graph_assignment_info"
        )
        if self._records_placement:
            so.add_session_config_entry(_ASSIGNMENT_KEY, "1")
        for key, value in options.extra.items():
            so.add_session_config_entry(key, value)
        if options.performance_hint is not None:
            self._ignored.append("performance_hint")
        if options.streams is not None:
            self._ignored.append("streams")
        # ORT runs the types stored in the graph: it has no precision switch on the CPU.
        if options.precision is not Precision.FP32:
            self._ignored.append(
                f"precision={options.precision.value} (ORT runs the model's own types)"
            )
        providers = [provider] if provider == PROVIDERS["cpu"] else [provider, PROVIDERS["cpu"]]
        try:
            self._session = ort.InferenceSession(str(artifact.path), so, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            text = str(exc)
            ops = tuple(
                sorted(
                    {f"{op}({ver})" for op, ver, _ in _NO_KERNEL.findall(text)}
                    | {f"{dom}{op}" for dom, op, _ in _NOT_REGISTERED.findall(text)}
                )
            )
            message = f"onnxruntime:{device} could not load {artifact.source}: {short_message(exc)}"
            raise CompileError(message, unsupported_ops=ops) from exc

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = validate_feeds(self.inputs, feeds, model=self._model)
        arrays = {k: _text(v, k) if v.dtype == object else v for k, v in arrays.items()}
        try:
            values = self._session.run(None, arrays)
        except Exception as exc:
            raise InferenceError(
                f"onnxruntime:{self.target.device} failed: {short_message(exc)}"
            ) from exc
        names = [o.name for o in self._session.get_outputs()]
        return {name: np.asarray(v) for name, v in zip(names, values, strict=True)}

    def placement(self) -> Placement | None:
        if not self._records_placement:
            return None
        nodes: dict[str, str] = {}
        for subgraph in self._session.get_provider_graph_assignment_info():
            for node in subgraph.get_nodes():
                nodes[node.name or f"<{node.op_type}>"] = subgraph.ep_name
        fallback = tuple(sorted(n for n, ep in nodes.items() if ep != self._provider))
        return Placement(
            node_devices=nodes,
            primary=self._provider,
            fallback_nodes=fallback,
            note="onnxruntime's node assignment, after its graph optimizations (fused nodes)",
        )

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": f"onnxruntime {ort.__version__}",
            "providers": self._session.get_providers(),
            "precision": "as stored in the model",
            "ignored_options": list(self._ignored),
        }

    def close(self) -> None:
        del self._session


def _text(array: np.ndarray, name: str) -> np.ndarray:
    """A string tensor with str elements: ORT turns a bytes element into its repr ("b'..'")."""
    if not any(isinstance(v, bytes | bytearray) for v in array.flat):
        return array
    try:
        values = [v.decode() if isinstance(v, bytes | bytearray) else v for v in array.flat]
    except UnicodeDecodeError as exc:
        raise InputError(
            f"input '{name}' holds bytes that are not UTF-8 ({exc.reason} at byte {exc.start}): "
            "ONNX Runtime string tensors hold text"
        ) from None
    return np.array(values, dtype=object).reshape(array.shape)


__all__ = ["PROVIDERS", "OnnxRuntimeBackend", "OnnxRuntimeSession", "Precision"]
