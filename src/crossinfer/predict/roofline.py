"""A roofline per fused group, summed: predicted batch-1 latency and best-batch throughput.

Each group takes max(compute time, memory time) at the device's peak times an efficiency, plus
a fixed kernel cost; groups a device cannot run go to the host over its link. The bound named
is where most of the time goes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crossinfer.errors import CatalogError
from crossinfer.hardware.catalog import Catalog, CatalogDevice, Instance
from crossinfer.predict.cost import OP_CLASSES, FusedGroup, ModelCost, precision_bytes

__all__ = [
    "BOUNDS",
    "PRIOR_EFFICIENCY",
    "HardwareTarget",
    "Prediction",
    "Scales",
    "batch_time",
    "hardware_targets",
    "predict_target",
    "time_terms",
]

# Fraction of peak a tuned runtime reaches on each op class before calibration: what vendor
# libraries (cuDNN, oneDNN, XLA) typically reach on large layers. Depthwise convolutions reuse
# little and run far below peak on every device. Written as priors: calibration rescales them.
PRIOR_EFFICIENCY: Mapping[str, float] = {
    "conv": 0.6,
    "depthwise-conv": 0.1,
    "matmul": 0.7,
    "attention": 0.5,  # two matmuls and a softmax in one kernel: the softmax stalls the MMA units
    "elementwise": 0.5,
    "normalization": 0.5,
    "reduce": 0.5,
    "data": 0.5,
}
PRIOR_MEMORY_EFFICIENCY = 0.7
# The host a fallback op runs on: one 16-core server socket at FP32 (unconfirmed estimate).
HOST_FALLBACK_GFLOPS = 1000.0
HOST_FALLBACK_GBS = 50.0

BOUNDS = ("compute", "memory", "host link", "unsupported op on host", "dispatch overhead")
# Time terms calibration scales: one per op class, plus the fixed costs.
TERMS = (*OP_CLASSES, "overhead", "host")
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_16BIT = ("fp16", "bf16")


@dataclass(frozen=True)
class Scales:
    """Multipliers on each time term (1.0: the prior), fitted per device family."""

    family: str
    factors: Mapping[str, float] = field(default_factory=dict)  # term -> multiplier
    source: str = "uncalibrated (prior efficiencies)"
    error: str = "uncalibrated"  # expected error, from the leave-one-device-out check

    def factor(self, term: str) -> float:
        return self.factors.get(term, 1.0)


@dataclass(frozen=True, kw_only=True)
class HardwareTarget:
    """One device a prediction is for: an accelerator, or a CPU instance's cores, and its price."""

    name: str  # "NVIDIA H100 SXM", "c7a.large"
    device: CatalogDevice
    cores: int = 1  # physical cores of a cpu-core device
    price_per_hour: float | None = None  # per device (an instance's price / its accelerators)
    price_source: str = ""

    @property
    def family(self) -> str:
        return self.device.family or self.device.kind

    def peak_flops(self, precision: str) -> float | None:
        device = self.device
        if device.kind == "cpu-core":
            per_cycle = device.flops_per_cycle.get(precision)
            if per_cycle is None or device.clock_ghz is None:
                return None
            return per_cycle * device.clock_ghz * 1e9 * self.cores
        peak = device.peak_tflops.get(precision)
        return None if peak is None else peak * 1e12

    def memory_bandwidth(self) -> float:
        bandwidth = self.device.memory_bandwidth_gbs
        if bandwidth is None:
            raise CatalogError(
                f"device '{self.device.name}' has no memory_bandwidth_gbs in the catalog: add "
                "it (with its source) to predict for it"
            )
        return bandwidth * 1e9 * (self.cores if self.device.kind == "cpu-core" else 1)

    def on_chip_bytes(self) -> float:
        size = self.device.on_chip_mb or 0.0
        return size * 1e6 * (self.cores if self.device.kind == "cpu-core" else 1)

    def on_chip_bandwidth(self) -> float:
        bandwidth = self.device.on_chip_bandwidth_gbs
        if bandwidth is None:
            return self.memory_bandwidth()
        return bandwidth * 1e9 * (self.cores if self.device.kind == "cpu-core" else 1)

    def precisions(self) -> tuple[str, ...]:
        """What to predict: FP32, one 16-bit float and INT8, those the device computes in."""
        have = self.device.precisions
        chosen = [p for p in ("fp32",) if p in have]
        chosen += [p for p in _16BIT if p in have][:1]
        chosen += [p for p in ("int8",) if p in have]
        return tuple(chosen)


@dataclass(frozen=True)
class Prediction:
    """Predicted figures of one model on one target at one precision."""

    hardware: str
    family: str
    precision: str
    batch1_latency_ms: float
    batch1_bound: str
    best_batch: int
    best_throughput: float  # samples/s
    throughput_bound: str
    cost_per_million: float | None  # USD per million inferences at the best batch
    price_source: str
    calibration: str  # where the efficiency factors came from
    error: str  # expected error, or "uncalibrated"
    unconfirmed: bool  # some figure it rests on is unconfirmed in the catalog
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "hardware": self.hardware,
            "family": self.family,
            "precision": self.precision,
            "batch1_latency_ms": self.batch1_latency_ms,
            "batch1_bound": self.batch1_bound,
            "best_batch": self.best_batch,
            "best_throughput": self.best_throughput,
            "throughput_bound": self.throughput_bound,
            "cost_per_million": self.cost_per_million,
            "price_source": self.price_source,
            "calibration": self.calibration,
            "error": self.error,
            "unconfirmed": self.unconfirmed,
            "notes": list(self.notes),
            "predicted": True,
        }


def hardware_targets(catalog: Catalog, names: Sequence[str] | None = None) -> list[HardwareTarget]:
    """Every accelerator device and CPU instance of the catalog, or those `names` pick.

    A name matches a device or instance name, case-insensitively, whole or as a substring
    ("h100", "tpu v5e", "c7a.large").
    """
    everything = _all_targets(catalog)
    if not names:
        return everything
    chosen: list[HardwareTarget] = []
    for name in names:
        wanted = name.strip().lower()
        exact = [t for t in everything if t.name.lower() == wanted]
        found = exact or [t for t in everything if wanted in t.name.lower()]
        if not found:
            known = ", ".join(t.name for t in everything)
            raise CatalogError(
                f"--hardware '{name}' matches no device or CPU instance in the catalog "
                f"({catalog.path}); known: {known}"
            )
        chosen.extend(t for t in found if t not in chosen)
    return chosen


def _all_targets(catalog: Catalog) -> list[HardwareTarget]:
    targets = []
    for device in catalog.devices:
        if device.kind == "cpu-core":
            continue
        price, source = _accelerator_price(catalog.instances, device)
        targets.append(
            HardwareTarget(
                name=device.name, device=device, price_per_hour=price, price_source=source
            )
        )
    for instance in catalog.instances:
        if not instance.cpu_device or instance.gpus:
            continue
        device = catalog.device(instance.cpu_device)
        cores = instance.physical_cores or instance.vcpus or 1
        targets.append(
            HardwareTarget(
                name=instance.name,
                device=device,
                cores=cores,
                price_per_hour=instance.price_per_hour,
                price_source=_price_text(instance),
            )
        )
    return targets


def _price_text(instance: Instance, share: int = 1) -> str:
    per = f" / {share} accelerators" if share > 1 else ""
    flag = " (unconfirmed)" if instance.unconfirmed else ""
    return f"{instance.name}{per}, {instance.provider} on-demand {instance.price_date}{flag}"


def _accelerator_price(
    instances: Iterable[Instance], device: CatalogDevice
) -> tuple[float | None, str]:
    offers = [
        (i.price_per_hour / max(i.gpus, 1), i)
        for i in instances
        if i.gpu.lower() == device.name.lower()
    ]
    if not offers:
        return None, "no price in the catalog"
    price, instance = min(offers, key=lambda offer: offer[0])
    return price, _price_text(instance, instance.gpus)


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class _Terms:
    """Time of one batch split by term (seconds) and by bound."""

    by_term: dict[str, float]
    by_bound: dict[str, float]
    host_link_s: float  # input and output transfer of the batch (overlaps in steady state)
    fallback_ops: tuple[str, ...]


def _unsupported(device: CatalogDevice, group: FusedGroup) -> str | None:
    for node in group.nodes:
        if node.op_type in device.unsupported_ops:
            return node.op_type
        if device.supported_ops and node.op_type not in device.supported_ops:
            return node.op_type
    return None


def time_terms(
    cost: ModelCost, target: HardwareTarget, precision: str, batch: int, scales: Scales
) -> _Terms:
    """The batch's time split into calibration terms (already scaled) and bounds."""
    device = target.device
    peak = target.peak_flops(precision)
    if peak is None:
        raise CatalogError(f"{target.name} has no {precision} peak in the catalog")
    width = precision_bytes(precision)
    weights_bytes = sum(g.weight_elements for g in cost.groups) * width
    weights_on_chip = weights_bytes <= target.on_chip_bytes()
    memory_bw = target.memory_bandwidth() * PRIOR_MEMORY_EFFICIENCY
    on_chip_bw = target.on_chip_bandwidth() * PRIOR_MEMORY_EFFICIENCY
    link = (device.host_link_gbs or 0.0) * 1e9
    by_term = dict.fromkeys(TERMS, 0.0)
    by_bound = dict.fromkeys(BOUNDS, 0.0)
    fallback: list[str] = []
    kernel_s = (device.kernel_overhead_us or 0.0) * 1e-6
    for group in cost.groups:
        op = _unsupported(device, group)
        if op is not None:
            # runs on the host at FP32; its boundary tensors cross the link both ways
            moved = group.bytes_moved("fp32", batch)
            seconds = batch * group.flops / (HOST_FALLBACK_GFLOPS * 1e9) + moved / (
                HOST_FALLBACK_GBS * 1e9
            )
            if link:
                seconds += 2 * batch * group.activation_elements * 4 / link
            seconds *= scales.factor("host")
            by_term["host"] += seconds
            by_bound["unsupported op on host"] += seconds
            if op not in fallback:
                fallback.append(op)
            continue
        efficiency = PRIOR_EFFICIENCY[group.op_class]
        compute = batch * group.flops / (peak * efficiency)
        weight_bytes = group.weight_elements * width
        activation_bytes = batch * (group.activation_elements * width + group.fixed_bytes)
        memory = weight_bytes / (on_chip_bw if weights_on_chip else memory_bw)
        activations_on_chip = activation_bytes <= target.on_chip_bytes() / 2
        memory += activation_bytes / (on_chip_bw if activations_on_chip else memory_bw)
        factor = scales.factor(group.op_class)
        by_term[group.op_class] += max(compute, memory) * factor
        by_bound["compute" if compute >= memory else "memory"] += max(compute, memory) * factor
        overhead = group.kernels * kernel_s * scales.factor("overhead")
        by_term["overhead"] += overhead
        by_bound["dispatch overhead"] += overhead
    call = (device.call_overhead_us or 0.0) * 1e-6 * scales.factor("overhead")
    by_term["overhead"] += call
    by_bound["dispatch overhead"] += call
    # inputs and outputs cross at the precision's width: a 16-bit or INT8 deployment is fed
    # converted input, as MLPerf harnesses feed theirs (REFERENCE.md: uint8 input kept an H200
    # at 98% of its device-resident rate)
    host_link_s = batch * cost.io_elements * width / link if link else 0.0
    return _Terms(by_term, by_bound, host_link_s, tuple(fallback))


def batch_time(terms: _Terms, *, latency: bool) -> float:
    """Seconds per batch: a lone request waits for its transfers; a stream overlaps them."""
    compute = sum(terms.by_term.values())
    if latency:
        return compute + terms.host_link_s
    return max(compute, terms.host_link_s)


def _bound(terms: _Terms, *, latency: bool) -> str:
    shares = dict(terms.by_bound)
    if latency:
        shares["host link"] += terms.host_link_s
    elif terms.host_link_s > sum(terms.by_term.values()):
        return "host link"
    name = max(shares, key=lambda key: shares[key])
    if name == "unsupported op on host" and terms.fallback_ops:
        return f"unsupported op on host ({', '.join(terms.fallback_ops)})"
    return name


def _max_batch(cost: ModelCost, target: HardwareTarget, precision: str) -> tuple[int, list[str]]:
    """The largest batch whose weights and live activations fit the device memory."""
    notes: list[str] = []
    width = precision_bytes(precision)
    weights = cost.parameter_elements * width
    capacity = (target.device.memory_gb or 0.0) * 1e9
    if target.device.kind == "cpu-core":
        return BATCHES[-1], notes
    if weights > capacity:
        chips = math.ceil(weights / capacity)
        if target.device.family == "groq-lpu":  # SRAM-only chips: a model spans several
            notes.append(
                f"weights {weights / 1e6:.0f} MB exceed one chip's {capacity / 1e6:.0f} MB: "
                f"needs {chips} chips pipelined (cost is for all of them; chip hops not counted)"
            )
        else:
            notes.append(
                f"does not fit: weights {weights / 1e6:.0f} MB exceed {capacity / 1e6:.0f} MB "
                "of device memory (figures assume they stream in, which few runtimes do)"
            )
        return BATCHES[-1], notes
    live = max((g.activation_elements for g in cost.groups), default=0.0) * width * 2
    fits = [b for b in BATCHES if weights + b * live <= capacity]
    return (fits[-1] if fits else 1), notes


def predict_target(
    cost: ModelCost,
    target: HardwareTarget,
    precision: str,
    scales: Scales | None = None,
) -> Prediction:
    """Batch-1 latency and best-batch throughput of `cost` on `target` at `precision`."""
    scales = scales or Scales(target.family)
    max_batch, notes = _max_batch(cost, target, precision)
    chips = 1
    if notes and target.device.family == "groq-lpu":  # weights spread over several chips
        width = precision_bytes(precision)
        chips = math.ceil(cost.parameter_elements * width / ((target.device.memory_gb or 1) * 1e9))
    one = time_terms(cost, target, precision, 1, scales)
    latency_s = batch_time(one, latency=True)
    best_batch, best_throughput, best_terms = 1, 0.0, one
    for batch in (b for b in BATCHES if b <= max_batch):
        terms = time_terms(cost, target, precision, batch, scales)
        throughput = batch / batch_time(terms, latency=False)
        # a bigger batch must earn its latency: stop once it gains under 2%
        if throughput <= best_throughput * 1.02:
            break
        best_batch, best_throughput, best_terms = batch, throughput, terms
    if one.fallback_ops:
        notes.append(
            f"{', '.join(one.fallback_ops)} not run by {target.device.name}: runs on the host, "
            "its tensors cross the host link"
        )
    cost_per_million = None
    if target.price_per_hour is not None and best_throughput > 0:
        cost_per_million = target.price_per_hour * chips / 3600.0 / best_throughput * 1e6
    device = target.device
    return Prediction(
        hardware=target.name,
        family=target.family,
        precision=precision,
        batch1_latency_ms=latency_s * 1e3,
        batch1_bound=_bound(one, latency=True),
        best_batch=best_batch,
        best_throughput=best_throughput,
        throughput_bound=_bound(best_terms, latency=False),
        cost_per_million=cost_per_million,
        price_source=target.price_source,
        calibration=scales.source,
        error=scales.error,
        unconfirmed=device.unconfirmed or bool(device.figures_unconfirmed),
        notes=tuple(notes),
    )
