"""What crossinfer knows about JAX without importing it: the registry entry.

The backend itself is `crossinfer.backends.jax`, which imports jax at the top; this module must
not, so the registry works when jax is missing.
"""

from __future__ import annotations

from types import ModuleType

from crossinfer.backends.base import BackendEntry, Precision


def probe(jax: ModuleType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Doctor's view: jax.devices() as platform:id (kind)."""
    devices: list[str] = []
    for device in jax.devices():
        label = f"{device.platform}:{device.id}"
        kind = str(getattr(device, "device_kind", "") or "")
        devices.append(f"{label} ({kind})" if kind and kind.lower() != device.platform else label)
    notes: list[str] = []
    if any(device.startswith("tpu:") for device in devices):
        # TPU matrix units take BF16; FP32 is emulated in several passes
        notes.append(
            "TPU: bf16 is the jax backend's default precision here (--precision bf16); "
            "fp32 runs XLA's 'highest' matmul precision, several bf16 passes"
        )
    return tuple(devices), tuple(notes)


# No option grid: jax's one option, matmul_precision, is a numeric precision, not a speed knob.
# Its defaults already follow the variant's precision (FP32: "highest", as parity needs; FP16/BF16:
# "default"); "tensorfloat32" on an FP32 variant would be a TF32 run that optimize never proved
# and the spec would call FP32. A user who wants it says so: bench --option matmul_precision=...
ENTRY = BackendEntry(
    "jax",
    "crossinfer.backends.jax",
    "JaxBackend",
    "pip install 'crossinfer[jax]'",
    runtime_module="jax",
    distributions=("jax",),
    probe=probe,
    device_aliases={"cuda": "gpu", "rocm": "gpu"},
    presets={
        # jax casts weights and inputs when it traces
        "bf16": ((), Precision.BF16),
        "fp16": ((), Precision.FP16),
    },
)
