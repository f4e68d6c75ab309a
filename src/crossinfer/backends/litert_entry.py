"""What crossinfer knows about LiteRT without importing it: the registry entry.

The backend itself is `crossinfer.backends.litert`, which imports ai_edge_litert at the top;
this module must not, so the registry works when LiteRT is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from crossinfer.backends.base import BackendEntry, Precision


def probe(_litert: ModuleType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Doctor's view: the CPU, and whether this environment can convert ONNX to LiteRT."""
    from crossinfer.backends.litert import converter_missing

    missing = converter_missing()
    return ("cpu (XNNPACK)",), (() if missing is None else (missing,))


def knob_grid(cores: int) -> tuple[Mapping[str, Any], ...]:
    # one interpreter per session, called from one thread at a time: XNNPACK's thread pool
    # with every core, or one thread per core with as many sessions
    grid: list[Mapping[str, Any]] = [{}]
    if cores > 1:
        grid.append({"threads": 1, "instances": cores})
    return tuple(grid)


ENTRY = BackendEntry(
    "litert",
    "crossinfer.backends.litert",
    "LiteRtBackend",
    "pip install 'crossinfer[litert]'; to convert ONNX models also: "
    "uv sync --all-extras --group litert-convert",
    runtime_module="ai_edge_litert",
    distributions=("ai-edge-litert",),
    probe=probe,
    knob_grid=knob_grid,
    presets={
        # the converter quantizes (full-integer PTQ on the int8-static calibration data) or
        # stores 16-bit weights when the session is prepared: no ONNX pass
        "int8": ((), Precision.INT8),
        "fp16": ((), Precision.FP16),
    },
    serving_platform="litert_tflite",
)
