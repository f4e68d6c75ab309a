"""ONNX Runtime backend: every execution provider the installed onnxruntime reports.

Node placement comes from ORT's own record of which provider each (optimized) node went to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
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


# CUDA execution provider options crossinfer passes through from SessionOptions.extra
CUDA_OPTION_KEYS = (
    "device_id",
    "cudnn_conv_algo_search",
    "cudnn_conv_use_max_workspace",
    "gpu_mem_limit",
    "arena_extend_strategy",
    "do_copy_in_default_stream",
    "enable_cuda_graph",
    "prefer_nhwc",
    "use_tf32",
    "tunable_op_enable",
    "tunable_op_tuning_enable",
)
_CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


def tensorrt_cache_dir() -> str:
    """TensorRT engines and timing caches live under crossinfer's cache, keyed by TensorRT itself."""
    from crossinfer.zoo import default_cache_dir

    return str(default_cache_dir() / "onnxruntime-tensorrt")


def provider_options(
    provider: str, precision: Precision, extra: Mapping[str, str], *, cache_dir: str | None = None
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """crossinfer's precision and options -> (provider options, session config entries, notes).

    CUDA: ``use_tf32`` follows TF32 versus FP32 (IEEE); FP16/BF16 come from the model's own
    types (``crossinfer optimize --precision fp16``), so they are noted as not applied.
    TensorRT: FP16/BF16/INT8 switch its builder flags (``trt_fp16_enable``, ...), and engines and
    timing caches are kept under crossinfer's cache dir so a second start skips the build.
    Extra keys named like the provider's options (CUDA_OPTION_KEYS, ``trt_*``) go to the
    provider; every other key stays a session config entry. Pure: no onnxruntime call.
    """
    options: dict[str, str] = {}
    config: dict[str, str] = {}
    notes: list[str] = []
    is_cuda = provider == PROVIDERS["cuda"]
    is_trt = provider == PROVIDERS["tensorrt"]
    for key, value in extra.items():
        if (is_cuda and key in CUDA_OPTION_KEYS) or (
            is_trt and (key.startswith("trt_") or key == "device_id")
        ):
            options[key] = str(value)
        else:
            config[key] = value
    if is_cuda:
        algo = options.setdefault("cudnn_conv_algo_search", "EXHAUSTIVE").upper()
        if algo not in _CONV_ALGO_SEARCH:
            raise UsageError(
                f"cudnn_conv_algo_search '{algo}' is not one of {', '.join(_CONV_ALGO_SEARCH)}"
            )
        options["cudnn_conv_algo_search"] = algo
        if precision in (Precision.FP32, Precision.TF32):
            options.setdefault("use_tf32", "1" if precision is Precision.TF32 else "0")
        else:
            notes.append(
                f"precision={precision.value} (the CUDA provider runs the model's own types: "
                f"crossinfer optimize --precision {precision.value})"
            )
        return options, config, notes
    if is_trt:
        flag = {
            Precision.FP16: "trt_fp16_enable",
            Precision.BF16: "trt_bf16_enable",
            Precision.INT8: "trt_int8_enable",
        }.get(precision)
        if flag is not None:
            options.setdefault(flag, "True")
        elif precision is Precision.TF32:
            notes.append("precision=tf32 (TensorRT picks TF32 itself for FP32 layers)")
        cache = cache_dir or tensorrt_cache_dir()
        options.setdefault("trt_engine_cache_enable", "True")
        options.setdefault("trt_engine_cache_path", cache)
        options.setdefault("trt_timing_cache_enable", "True")
        options.setdefault("trt_timing_cache_path", cache)
        return options, config, notes
    # the other providers run the types stored in the graph: no precision switch
    if precision is not Precision.FP32:
        notes.append(f"precision={precision.value} (ORT runs the model's own types)")
    return options, config, notes


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
        self._provider_options, config_entries, notes = provider_options(
            provider, options.precision, options.extra
        )
        for key, value in config_entries.items():
            so.add_session_config_entry(key, value)
        if options.performance_hint is not None:
            self._ignored.append("performance_hint")
        if options.streams is not None:
            self._ignored.append("streams")
        self._ignored.extend(notes)
        first: str | tuple[str, dict[str, str]] = (
            (provider, self._provider_options) if self._provider_options else provider
        )
        providers = [first] if provider == PROVIDERS["cpu"] else [first, PROVIDERS["cpu"]]
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
        # asked once: get_outputs() builds new NodeArg objects on every call
        self._output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = validate_feeds(self.inputs, feeds, model=self._model)
        arrays = {k: _text(v, k) if v.dtype == object else v for k, v in arrays.items()}
        try:
            values = self._session.run(None, arrays)
        except Exception as exc:
            raise InferenceError(
                f"onnxruntime:{self.target.device} failed: {short_message(exc)}"
            ) from exc
        return {name: np.asarray(v) for name, v in zip(self._output_names, values, strict=True)}

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], list[Any]]:
        """A call with no arguments that runs the model on copies of ``feeds`` already in the
        provider's memory (IO binding; outputs stay there): device time without host copies,
        for benchmarks. CPU providers bind host memory."""
        arrays = validate_feeds(self.inputs, feeds, model=self._model)
        on_gpu = self._provider in (PROVIDERS["cuda"], PROVIDERS["tensorrt"])
        memory = "cuda" if on_gpu else "cpu"
        device_id = int(self._provider_options.get("device_id", "0")) if on_gpu else 0
        binding = self._session.io_binding()
        for name, array in arrays.items():
            value = ort.OrtValue.ortvalue_from_numpy(array, memory, device_id)
            binding.bind_ortvalue_input(name, value)
        for output in self._session.get_outputs():
            binding.bind_output(output.name, memory, device_id)
        session = self._session

        def step() -> list[Any]:  # the outputs as OrtValues, in the provider's memory
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return list(binding.get_outputs())

        return step

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
            "provider_options": dict(self._provider_options),
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
