"""OpenVINO backend: CPU, GPU, NPU and AUTO devices with LATENCY/THROUGHPUT hints.

Placement comes from `Core.query_model`; the precision that actually ran from the compiled model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import openvino as ov

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
    UsageError,
    short_message,
)
from crossinfer.model import ModelArtifact

# OpenVINO's CPU plugin picks BF16 by itself on AVX512_BF16/AMX CPUs: ask for what we mean.
_PRECISION_HINTS = {Precision.FP32: "f32", Precision.FP16: "f16", Precision.BF16: "bf16"}
_VIRTUAL = ("AUTO", "HETERO", "MULTI")
_SKIP_OPS = {"Parameter", "Result", "Constant"}


class OpenVinoBackend:
    name = "openvino"

    def __init__(self) -> None:
        self._core = ov.Core()

    def version(self) -> str:
        return str(ov.get_version())

    def devices(self) -> list[DeviceInfo]:
        found = []
        for device in self._core.available_devices:
            try:
                full = str(self._core.get_property(device, "FULL_DEVICE_NAME"))
            except RuntimeError:
                full = device
            found.append(DeviceInfo(name=device.lower(), description=full))
        found.append(DeviceInfo(name="auto", description="AUTO: OpenVINO picks among the above"))
        return found

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility:
        try:
            ov_device = self._device(device)
            model = self._core.read_model(str(artifact.path))
        except (RuntimeError, DeviceUnavailableError, UsageError) as exc:
            return Compatibility(False, short_message(exc), unsupported_ops=_unconverted(str(exc)))
        if ov_device.split(".")[0] in _VIRTUAL:
            return Compatibility(True)  # AUTO decides at compile time; prepare() reports it
        try:
            query = self._core.query_model(model, ov_device)
        except RuntimeError as exc:
            return Compatibility(False, short_message(exc))
        unsupported = _unsupported(model, query)
        if unsupported:
            return Compatibility(
                False,
                f"OpenVINO {ov_device} cannot run op type(s) {', '.join(unsupported)}",
                unsupported_ops=unsupported,
            )
        return Compatibility(True)

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> OpenVinoSession:
        ov_device = self._device(device)
        return OpenVinoSession(self._core, artifact, ov_device, options or SessionOptions())

    def _device(self, device: str) -> str:
        name = device.upper()
        base = name.split(".")[0]
        if base in _VIRTUAL:
            return name
        available = self._core.available_devices
        if name in available or any(d.split(".")[0] == name for d in available):
            return name
        if base in ("CPU", "GPU", "NPU"):
            why = {
                "GPU": "no Intel GPU, or its OpenCL driver (libOpenCL.so.1, intel-opencl-icd) is missing",
                "NPU": "no Intel NPU, or its driver is missing",
                "CPU": "the CPU plugin did not load",
            }[base]
            raise DeviceUnavailableError(
                f"OpenVINO device {name} is not available here ({why}); available: "
                f"{', '.join(available) or 'none'}"
            )
        raise UsageError(
            f"OpenVINO knows no device '{device}': use one of "
            f"{', '.join(d.lower() for d in available)} or auto"
        )


class OpenVinoSession:
    def __init__(
        self, core: ov.Core, artifact: ModelArtifact, device: str, options: SessionOptions
    ) -> None:
        self.target = Target("openvino", device.lower())
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self._model_name = artifact.source
        self._ignored: list[str] = []
        config: dict[str, Any] = {}
        if options.precision in _PRECISION_HINTS:
            config["INFERENCE_PRECISION_HINT"] = _PRECISION_HINTS[options.precision]
        else:
            # INT8 comes from a quantized model (FakeQuantize), not from a hint.
            self._ignored.append(f"precision={options.precision.value} (model-defined)")
        if options.performance_hint is not None:
            config["PERFORMANCE_HINT"] = options.performance_hint.upper()
        if options.threads is not None:
            config["INFERENCE_NUM_THREADS"] = options.threads
        if options.streams is not None:
            config["NUM_STREAMS"] = options.streams
        if options.graph_optimization_level is not None:
            self._ignored.append("graph_optimization_level")
        config.update(options.extra)
        try:
            self._model = core.read_model(str(artifact.path))
            self._compiled = core.compile_model(self._model, device, config)
            # AUTO cannot be queried itself: ask the device it picked
            self._executed_on = [str(d) for d in self._compiled.get_property("EXECUTION_DEVICES")]
            queried = self._executed_on[0] if device.split(".")[0] in _VIRTUAL else device
            self._query = core.query_model(self._model, queried)
        except RuntimeError as exc:
            raise CompileError(
                f"openvino:{device.lower()} could not compile {artifact.source}: {short_message(exc)}",
                unsupported_ops=_unconverted(str(exc)),
            ) from exc
        self._device = device
        # a port can carry several tensor names after OpenVINO's fusions: pick the model's own
        declared = [spec.name for spec in artifact.outputs]
        self._output_names = [
            next(
                (n for n in declared if n in port.get_names()),
                declared[i] if i < len(declared) else port.get_any_name(),
            )
            for i, port in enumerate(self._compiled.outputs)
        ]
        self._request = self._compiled.create_infer_request()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = validate_feeds(self.inputs, feeds, model=self._model_name)
        try:
            result = self._request.infer(arrays)
        except RuntimeError as exc:
            raise InferenceError(
                f"openvino:{self.target.device} failed: {short_message(exc)}"
            ) from exc
        # share_outputs is off by default, so these arrays are ours to keep
        return {
            name: np.asarray(result[port])
            for name, port in zip(self._output_names, self._compiled.outputs, strict=True)
        }

    def placement(self) -> Placement:
        nodes = {
            op.get_friendly_name(): self._query.get(op.get_friendly_name(), "unsupported")
            for op in self._model.get_ops()
            if op.get_type_name() not in _SKIP_OPS
        }
        primary = self._device.split(".")[0]
        if primary in _VIRTUAL:
            primary = self._executed_on[0].split(".")[0]
        fallback = tuple(sorted(n for n, d in nodes.items() if d.split(".")[0] != primary))
        return Placement(
            node_devices=nodes,
            primary=primary,
            fallback_nodes=fallback,
            unsupported_ops=_unsupported(self._model, self._query),
            note="OpenVINO Core.query_model on the model as read (before its own fusions)",
        )

    def runtime_precisions(self) -> dict[str, int]:
        """How many executed layers ran at each precision (f32, bf16, i8, ...)."""
        counts: Counter[str] = Counter()
        for op in self._compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if str(info["layerType"].astype(str)) in ("Input", "Output", "Const"):
                continue
            counts[str(info["runtimePrecision"].astype(str))] += 1
        return dict(counts)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "runtime": f"openvino {ov.get_version()}",
            "device": self._device,
            "execution_devices": self._executed_on,
        }
        for key in (
            "INFERENCE_PRECISION_HINT",
            "PERFORMANCE_HINT",
            "NUM_STREAMS",
            "INFERENCE_NUM_THREADS",
        ):
            try:
                info[key.lower()] = _property_text(self._compiled.get_property(key))
            except RuntimeError:
                continue
        try:
            info["runtime_precisions"] = self.runtime_precisions()
        except (RuntimeError, KeyError):
            info["runtime_precisions"] = "not reported by this device"
        info["ignored_options"] = list(self._ignored)
        return info

    def close(self) -> None:
        del self._request
        del self._compiled


def _unsupported(model: ov.Model, query: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(
        sorted(
            {
                op.get_type_name()
                for op in model.get_ops()
                if op.get_type_name() not in _SKIP_OPS and op.get_friendly_name() not in query
            }
        )
    )


def _unconverted(message: str) -> tuple[str, ...]:
    # "No conversion rule found for operations: com.example.Relu, Foo" from the ONNX frontend
    marker = "No conversion rule found for operations:"
    if marker not in message:
        return ()
    listed = message.split(marker, 1)[1].splitlines()[0]
    ops = (op.strip() for op in listed.split(",") if op.strip())
    # the frontend writes domain.Op; crossinfer writes domain:Op everywhere
    return tuple(sorted(":".join(op.rsplit(".", 1)) for op in ops))


def _property_text(value: object) -> str:
    # precisions come back as ov.Type, whose str() is "<Type: 'float32'>"; to_string() is "f32"
    to_string = getattr(value, "to_string", None)
    return str(to_string()) if callable(to_string) else str(value)
