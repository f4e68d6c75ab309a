"""What crossinfer knows about OpenVINO without importing it: the registry entry.

The backend itself is `crossinfer.backends.openvino`, which imports openvino at the top; this
module must not, so the registry works when OpenVINO is missing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from crossinfer.backends.base import BackendEntry, Precision


def probe(ov: ModuleType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Doctor's view: the plugin devices with their full names, and the CPU's default precision."""
    from crossinfer.hardware.discover import describe_error

    core_class = getattr(ov, "Core", None)
    if core_class is None:
        # Releases before 2023.1 only exposed Core under openvino.runtime.
        core_class = importlib.import_module("openvino.runtime").Core
    core = core_class()
    devices: list[str] = []
    notes: list[str] = []
    for device in core.available_devices:
        device_id = str(device)
        try:
            full_name = str(core.get_property(device_id, "FULL_DEVICE_NAME"))
        except Exception as exc:
            full_name = ""
            notes.append(f"{device_id}: FULL_DEVICE_NAME unavailable ({describe_error(exc)})")
        devices.append(f"{device_id} ({full_name})" if full_name else device_id)
        if device_id == "CPU":
            try:
                # ov.Type prints as "<Type: 'bfloat16'>"; get_type_name() gives "bf16".
                precision = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
                getter = getattr(precision, "get_type_name", None)
                type_name = str(getter()) if callable(getter) else str(precision)
                notes.append(f"CPU default inference precision: {type_name}")
            except Exception as exc:
                notes.append(f"CPU inference precision unknown: {describe_error(exc)}")
    return tuple(devices), tuple(notes)


def knob_grid(cores: int) -> tuple[Mapping[str, Any], ...]:
    # The session holds one infer request, so it is called from one thread at a time; the hint
    # still changes how the plugin splits the cores (streams) and which kernels it picks.
    return ({"performance_hint": "LATENCY"}, {"performance_hint": "THROUGHPUT"})


ENTRY = BackendEntry(
    "openvino",
    "crossinfer.backends.openvino",
    "OpenVinoBackend",
    "pip install 'crossinfer[openvino]'",
    runtime_module="openvino",
    distributions=("openvino",),
    probe=probe,
    knob_grid=knob_grid,
    presets={
        "int8": (("int8-nncf",), Precision.FP32),
        "int8-accuracy-aware": (("int8-nncf-accuracy-aware",), Precision.FP32),
        # OpenVINO converts at compile time: no pass, the runtime is asked for the precision
        "bf16": ((), Precision.BF16),
        "fp16": ((), Precision.FP16),
    },
    serving_platform="openvino",
)
