"""What crossinfer knows about PyTorch without importing it: the registry entry.

The backend itself is `crossinfer.backends.torch`, which imports torch at the top; this module
must not, so the registry works when torch is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

from crossinfer.backends.base import BackendEntry, Precision


def probe(torch: ModuleType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Doctor's view: cpu, then CUDA/ROCm, XPU and MPS devices when present."""
    devices = ["cpu"]
    notes: list[str] = []
    if torch.cuda.is_available():
        for index in range(int(torch.cuda.device_count())):
            devices.append(f"cuda:{index} ({torch.cuda.get_device_name(index)})")
        if getattr(torch.version, "hip", None):
            notes.append(f"ROCm build (HIP {torch.version.hip}): cuda:N devices are AMD GPUs")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices.extend(f"xpu:{index}" for index in range(int(xpu.device_count())))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return tuple(devices), tuple(notes)


def option_grid(device: str, exhaustive: bool) -> tuple[Mapping[str, str], ...]:
    """Tune's torch modes on a device (TorchSettings' keys), eager first: it compiles nothing,
    so quick screens each variant cheaply before it spends compiles.

    CUDA graphs need CUDA; compile-cudagraphs (inductor's kernels in crossinfer's own capture)
    is what reaches batch-1 latency on transformers, where eager kernels are launch-bound and
    cudagraphs alone keeps them unfused (BERT-base at batch 256 on the H200: eager and
    cudagraphs 38 ms, compile 15 ms). max-autotune benchmarks many kernels per layer (minutes on ResNet-50),
    so only an exhaustive search tries it; the no-cudagraphs flavour, because inductor's own CUDA
    graph trees are per thread and LoadGen calls the session from its worker threads (mode
    cudagraphs is crossinfer's own capture, which is not).
    """
    cuda = device == "cuda" or device.startswith("cuda:")
    if not cuda:
        grid: list[Mapping[str, str]] = [{"mode": "eager"}, {"mode": "compile"}]
        if exhaustive and device != "cpu":
            grid.append({"mode": "compile", "compile_mode": "max-autotune-no-cudagraphs"})
        return tuple(grid)
    # on CUDA a fixed-shape run is captured: compile-cudagraphs takes plain compile's place
    # (the same kernels without their launches), which an exhaustive search still tries
    grid = [{"mode": "eager"}, {"mode": "cudagraphs"}, {"mode": "compile-cudagraphs"}]
    if exhaustive:
        grid.append({"mode": "compile"})
        grid.append({"mode": "compile", "compile_mode": "max-autotune-no-cudagraphs"})
    return tuple(grid)


ENTRY = BackendEntry(
    "torch",
    "crossinfer.backends.torch",
    "TorchBackend",
    "pip install 'crossinfer[torch]'",
    runtime_module="torch",
    distributions=("torch",),
    probe=probe,
    option_grid=option_grid,
    presets={
        # torch converts the weights (FP16) or runs under autocast (BF16) when it prepares the
        # session
        "bf16": ((), Precision.BF16),
        "fp16": ((), Precision.FP16),
    },
)
