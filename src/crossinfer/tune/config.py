"""What `crossinfer tune` searches and how it judges: the TuneConfig every stage reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crossinfer.backends.base import Target, backend_entry, find_backend_entry
from crossinfer.errors import UsageError
from crossinfer.hardware.catalog import Price, load_catalog, resolve_price
from crossinfer.option_parsing import parse_batch_sizes, parse_names
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
    # the best this many (that meet the constraints) are measured again in turns and the pick
    # read from the rounds (tune.in_turns); with turn_rounds 0, measured once more, the mean counts
    confirm: int = 3
    turn_rounds: int = 2
    turn_within: float = 1.5  # only those within this factor of the best are measured in turns
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


def tune_config(
    *,
    backends: str | None = None,
    targets: Sequence[str] = (),
    devices: str | None = None,
    precisions: str = ",".join(DEFAULT_PRECISIONS),
    batch: str = ",".join(map(str, DEFAULT_BATCH_SIZES)),
    strategy: str = "quick",
    budget: int | None = None,
    objective: str = "throughput",
    max_p99_ms: float | None = None,
    max_accuracy_drop: float | None = None,
    max_memory_mb: float | None = None,
    dataset: Path | None = None,
    calibration: str | None = None,
    instance: str | None = None,
    price_per_hour: float | None = None,
    catalog: Path | None = None,
    measure_ms: int = 1000,
    fresh: bool = False,
    turn_rounds: int = 2,
) -> TuneConfig:
    """The TuneConfig for options given as text (`crossinfer tune`'s): comma lists, names.

    Every option is checked here, before minutes of work: an unknown strategy or backend, a bad
    batch list, an instance missing from the hardware catalog (`catalog` laid over the built-in
    one) are refused with a UsageError naming the option.
    """
    from crossinfer.tune.strategies import STRATEGIES

    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    if turn_rounds < 0:
        raise UsageError(
            f"--turn-rounds {turn_rounds}: give 0 (confirm each finalist once, no turns) or more"
        )
    names = parse_names(backends)
    for name in names:
        backend_entry(name)  # an unknown backend is refused before minutes of work
    price = resolve_price(load_catalog(catalog), instance=instance, price_per_hour=price_per_hour)
    return TuneConfig(
        backends=names,
        targets=tuple(Target.parse(t) for t in targets),
        devices=tuple(d.strip().lower() for d in (devices or "").split(",") if d.strip()),
        precisions=tuple(p.strip().lower() for p in precisions.split(",") if p.strip()),
        batch_sizes=parse_batch_sizes(batch),
        strategy=strategy,
        budget=budget,
        objective=Objective.parse(objective),
        constraints=Constraints(
            max_p99_ms=max_p99_ms, max_accuracy_drop=max_accuracy_drop, max_memory_mb=max_memory_mb
        ),
        price=price,
        measure_ms=measure_ms,
        turn_rounds=turn_rounds,
        calibration=calibration,
        dataset=dataset,
        fresh=fresh,
    )
