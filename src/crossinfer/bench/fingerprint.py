"""What a benchmark ran on: a hardware fingerprint, its stable key, and the runtime versions.

Results are only compared with results of the same fingerprint key; no hostname is recorded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from crossinfer.backends.base import backend_entries
from crossinfer.hardware.discover import discover_cpu, discover_gpus

# Libraries that shape timings besides the runtimes, whose package names their registry entries
# give: distributions per reported name, first installed wins.
_LIBRARIES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx",),
    "numpy": ("numpy",),
    "mlcommons-loadgen": ("mlcommons-loadgen",),
}

_KEY_LENGTH = 16  # hex digits: 64 bits, ample to tell apart the machines of one results store


def hardware_fingerprint() -> dict[str, Any]:
    """CPU identity and ISA flags, GPU names and driver: what makes timings comparable.

    Memory size and core frequency are left out on purpose: they vary between readings of the
    same machine (containers, power states) and would split one machine's history in two.
    """
    cpu = discover_cpu()
    gpus = discover_gpus()
    return {
        "cpu": {
            "model": cpu.model_name,
            "vendor": cpu.vendor,
            "architecture": cpu.architecture,
            "logical_cores": cpu.logical_cores,
            "isa_flags": sorted(name for name, present in cpu.features.items() if present),
        },
        # Lists, not tuples: the fingerprint must come back equal from the JSON of the store.
        "gpus": [{"name": gpu.name, "driver_version": gpu.driver_version} for gpu in gpus.gpus],
    }


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text (tuples as lists)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"not JSON-serialisable, so it cannot be keyed or stored: {exc}") from exc


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    """A short, stable key of a fingerprint: the first 16 hex digits of its canonical sha256."""
    digest = hashlib.sha256(canonical_json(dict(fingerprint)).encode("utf-8")).hexdigest()
    return digest[:_KEY_LENGTH]


def runtime_versions() -> dict[str, str]:
    """Installed versions of the runtimes and libraries that shape timings, plus Python.

    Read from package metadata, so no runtime is imported (OpenVINO alone takes seconds);
    packages that are not installed are left out.
    """
    versions: dict[str, str] = {}
    for name, distributions in _LIBRARIES.items():
        version = _first_installed(distributions)
        if version is not None:
            versions[name] = version
    for entry in backend_entries():
        runtime = entry.installed_version()
        if runtime is not None:
            versions[entry.name] = runtime
    versions["python"] = platform.python_version()
    return versions


def _first_installed(distributions: Sequence[str]) -> str | None:
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
