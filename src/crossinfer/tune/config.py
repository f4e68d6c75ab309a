"""What `crossinfer tune` searches and how it judges: the TuneConfig every stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crossinfer.backends.base import Target, find_backend_entry
from crossinfer.errors import UsageError
from crossinfer.hardware.catalog import Price
from crossinfer.tune.constraints import Constraints, Objective

DEFAULT_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_BATCH_SIZES = (1, 8, 32)


@dataclass(frozen=True)
class TuneConfig:
    """What to search and how to judge it."""

    backends: tuple[str, ...] = ()  # only these backends; empty: every one available
    targets: tuple[Target, ...] = ()  # only these BACKEND:DEVICE; empty: every one available
    devices: tuple[str, ...] = ()  # only devices named so ("cuda": cuda, cuda:1); empty: all
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    strategy: str = "quick"
    budget: int | None = None  # quick: at most this many measurements
    objective: Objective = Objective.THROUGHPUT
    constraints: Constraints = field(default_factory=Constraints)
    price: Price | None = None
    measure_ms: int = 1000  # LoadGen min_duration of each measurement
    optimize_seconds: float = 0.6  # optimize's own speed check per step
    calibration: str | None = None  # None: the zoo model's data set, else synthetic (said so)
    dataset: Path | None = None  # labelled .npz; None: the zoo model's, if it has one
    fresh: bool = False  # ignore stored measurements
    confirm: int = 3  # the best this many are measured a second time; the mean counts
    variants_dir: Path | None = None  # where optimized models go; None: OUT/variants
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        unknown = [p for p in self.precisions if p not in {"fp32", "fp16", "bf16", "int8"}]
        if unknown:
            raise UsageError(
                f"--precisions: unknown {', '.join(unknown)}; choose from fp32, fp16, bf16, int8"
            )
        if any(not d.strip() for d in self.devices):
            raise UsageError(
                f"--device {list(self.devices)}: a device name is empty; write e.g. cuda, cpu or gpu"
            )
        if self.objective is Objective.COST and self.price is None:
            raise UsageError(
                "--objective cost needs a price: the price of this machine is unknown unless you "
                "name its instance (--instance c7a.large, see the hardware catalog) or give "
                "--price-per-hour"
            )


def wanted(target: Target, config: TuneConfig) -> bool:
    """Whether the --backends, --target and --device filters keep a target (all that are given)."""
    if config.backends and target.backend not in config.backends:
        return False
    if config.targets and target not in config.targets:
        return False
    if not config.devices:
        return True
    entry = find_backend_entry(target.backend)
    aliases = entry.device_aliases if entry is not None else {}
    return any(device_matches(target.device, aliases.get(d, d)) for d in config.devices)


def device_matches(device: str, name: str) -> bool:
    """`name` is the device or the family it belongs to: "cuda" takes cuda and cuda:1, "gpu"
    takes OpenVINO's gpu.0 and jax's gpu:0; "cuda:1" only itself."""
    device, name = device.lower(), name.lower()
    return device == name or device.startswith((f"{name}:", f"{name}."))
