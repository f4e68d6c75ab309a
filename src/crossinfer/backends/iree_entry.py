"""What crossinfer knows about IREE without importing it: the registry entry.

The backend itself is `crossinfer.backends.iree`, which imports the IREE compiler and runtime at
the top; this module must not, so the registry works when IREE is missing.
"""

from __future__ import annotations

from types import ModuleType

from crossinfer.backends.base import BackendEntry, Precision


def probe(iree_runtime: ModuleType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Doctor's view: the HAL drivers compiled into the runtime."""
    drivers = tuple(str(d) for d in iree_runtime.query_available_drivers())
    return drivers, ("devices are IREE HAL drivers; a driver listed may still find no device",)


ENTRY = BackendEntry(
    "iree",
    "crossinfer.backends.iree",
    "IreeBackend",
    "pip install 'crossinfer[iree]'",
    runtime_module="iree.runtime",
    distributions=("iree-base-runtime", "iree-runtime"),
    probe=probe,
    presets={
        # iree demotes matmul/conv inputs when it compiles
        "bf16": ((), Precision.BF16),
        "fp16": ((), Precision.FP16),
    },
)
