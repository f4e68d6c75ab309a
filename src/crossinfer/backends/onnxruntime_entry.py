"""What crossinfer knows about ONNX Runtime without importing it: the registry entry.

The backend itself is `crossinfer.backends.onnxruntime`, which imports onnxruntime at the top;
this module must not, so the registry works when a runtime is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from crossinfer.backends.base import BackendEntry, Precision


def probe(ort: ModuleType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Doctor's view: the execution providers of this build."""
    providers = tuple(str(p) for p in ort.get_available_providers())
    notes: list[str] = []
    if "CUDAExecutionProvider" not in providers:
        notes.append(
            "no CUDA execution provider in this build; for NVIDIA GPUs install "
            "onnxruntime-gpu instead (pip install onnxruntime-gpu)"
        )
    return providers, tuple(notes)


def knob_grid(cores: int) -> tuple[Mapping[str, Any], ...]:
    # One session with every core, or one thread per core with as many concurrent callers
    # (ORT's InferenceSession.run is thread-safe): the second often wins on throughput.
    grid: list[Mapping[str, Any]] = [{}]
    if cores > 1:
        grid.append({"threads": 1, "instances": cores})
    return tuple(grid)


ENTRY = BackendEntry(
    "onnxruntime",
    "crossinfer.backends.onnxruntime",
    "OnnxRuntimeBackend",
    "pip install onnxruntime (or onnxruntime-gpu for NVIDIA GPUs)",
    runtime_module="onnxruntime",
    distributions=(
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxruntime-openvino",
        "onnxruntime-directml",
        "onnxruntime-qnn",
    ),
    probe=probe,
    knob_grid=knob_grid,
    presets={
        "fp16": (("simplify", "fp16"), Precision.FP32),
        "int8": (("simplify", "int8-static"), Precision.FP32),
        "int8-accuracy-aware": (("simplify", "int8-accuracy-aware"), Precision.FP32),
    },
    serving_platform="onnxruntime_onnx",
)
