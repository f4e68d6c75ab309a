"""Capacity plan: one replica's measured throughput -> replicas, machines and cost per hour.

`crossinfer plan` answers "what does serving Q requests/s under a p99 of P ms cost?" for every
instance of the hardware catalog, from the throughput one replica sustained while its p99 stayed
within the bound (measured by `serve --ray` benchmarks, or a spec's ``[measured]``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from crossinfer.errors import UsageError
from crossinfer.hardware.catalog import Instance

__all__ = ["InstancePlan", "ReplicaCapacity", "plan_capacity", "predicted_throughput"]


@dataclass(frozen=True, kw_only=True)
class ReplicaCapacity:
    """What one replica sustains and reserves.

    ``throughput`` is requests/s at which its p99 latency stayed at or under ``p99_ms``;
    ``efficiency`` is the share of that each added replica delivers (1.0: linear scaling).
    """

    throughput: float
    p99_ms: float
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    efficiency: float = 1.0

    def __post_init__(self) -> None:
        if self.throughput <= 0:
            raise UsageError(f"replica throughput must be > 0 requests/s, got {self.throughput}")
        if self.p99_ms <= 0:
            raise UsageError(f"replica p99 must be > 0 ms, got {self.p99_ms}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise UsageError("num_cpus and num_gpus must be >= 0")
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise UsageError("a replica must reserve some num_cpus or num_gpus to be placed")
        if not 0 < self.efficiency <= 1:
            raise UsageError(f"efficiency must lie in (0, 1], got {self.efficiency}")


@dataclass(frozen=True, kw_only=True)
class InstancePlan:
    """The plan on one catalog instance; ``fits`` False with ``reason`` when it cannot host one."""

    instance: str
    provider: str
    price_per_hour: float
    replicas: int
    replicas_per_machine: int
    machines: int
    cost_per_hour: float
    predicted_throughput: float
    fits: bool = True
    reason: str = ""
    unconfirmed_price: bool = False


def predicted_throughput(capacity: ReplicaCapacity, replicas: int) -> float:
    """Requests/s `replicas` replicas sustain within the p99 bound (the first at full rate)."""
    if replicas < 1:
        return 0.0
    return capacity.throughput * (1 + (replicas - 1) * capacity.efficiency)


def replicas_for(capacity: ReplicaCapacity, target_qps: float) -> int:
    """The fewest replicas whose predicted throughput reaches `target_qps`."""
    if target_qps <= capacity.throughput:
        return 1
    extra = (target_qps / capacity.throughput - 1) / capacity.efficiency
    return 1 + math.ceil(extra - 1e-9)


def plan_capacity(
    capacity: ReplicaCapacity,
    *,
    target_qps: float,
    target_p99_ms: float,
    instances: Iterable[Instance],
) -> list[InstancePlan]:
    """One plan per instance, cheapest first (instances that cannot host a replica last).

    Raises UsageError when the target p99 is tighter than the bound the replica was measured
    at: its throughput says nothing about a tighter one (measure again at that bound).
    """
    if target_qps <= 0:
        raise UsageError(f"--qps must be > 0, got {target_qps}")
    if target_p99_ms < capacity.p99_ms:
        raise UsageError(
            f"target p99 {target_p99_ms:g} ms is tighter than the {capacity.p99_ms:g} ms the "
            "replica's throughput was measured at: measure it again at that bound"
        )
    replicas = replicas_for(capacity, target_qps)
    plans = []
    for instance in instances:
        per_machine, reason = _replicas_per_machine(capacity, instance)
        machines = math.ceil(replicas / per_machine) if per_machine else 0
        plans.append(
            InstancePlan(
                instance=instance.name,
                provider=instance.provider,
                price_per_hour=instance.price_per_hour,
                replicas=replicas,
                replicas_per_machine=per_machine,
                machines=machines,
                cost_per_hour=machines * instance.price_per_hour,
                predicted_throughput=predicted_throughput(capacity, replicas),
                fits=per_machine > 0,
                reason=reason,
                unconfirmed_price=instance.unconfirmed,
            )
        )
    return sorted(plans, key=lambda p: (not p.fits, p.cost_per_hour, p.instance))


def _replicas_per_machine(capacity: ReplicaCapacity, instance: Instance) -> tuple[int, str]:
    limits = []
    if capacity.num_cpus > 0:
        if instance.vcpus is None:
            return 0, "the catalog gives no vCPU count"
        limits.append(math.floor(instance.vcpus / capacity.num_cpus + 1e-9))
    if capacity.num_gpus > 0:
        if not instance.gpus:
            return 0, "no GPU"
        limits.append(math.floor(instance.gpus / capacity.num_gpus + 1e-9))
    per_machine = min(limits)
    if per_machine == 0:
        need = f"{capacity.num_cpus:g} CPUs" if capacity.num_cpus else ""
        need += f"{' and ' if need else ''}{capacity.num_gpus:g} GPUs" if capacity.num_gpus else ""
        return 0, f"a replica needs {need}, more than one machine has"
    return per_machine, ""
