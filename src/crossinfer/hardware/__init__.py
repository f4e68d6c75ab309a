"""Hardware and runtime discovery for ``crossinfer doctor``.

Re-exports the report types, ``discover`` and the rich renderer.
"""

from __future__ import annotations

from crossinfer.hardware.discover import (
    ARM_FEATURES,
    IMPORTANT_FEATURES,
    X86_FEATURES,
    CpuInfo,
    GpuInfo,
    GpuReport,
    OnnxInfo,
    ParsedCpuinfo,
    RuntimeInfo,
    SystemReport,
    discover,
    discover_cpu,
    discover_gpus,
    discover_onnx,
    known_runtimes,
    parse_cpuinfo,
    probe_runtime,
)
from crossinfer.hardware.render import render_report

__all__ = [
    "ARM_FEATURES",
    "IMPORTANT_FEATURES",
    "X86_FEATURES",
    "CpuInfo",
    "GpuInfo",
    "GpuReport",
    "OnnxInfo",
    "ParsedCpuinfo",
    "RuntimeInfo",
    "SystemReport",
    "discover",
    "discover_cpu",
    "discover_gpus",
    "discover_onnx",
    "known_runtimes",
    "parse_cpuinfo",
    "probe_runtime",
    "render_report",
]
