"""Efficiency factors per op class and device family, fitted from the measured runs of the store.

Each stored run becomes an observation: the roofline's time terms at the prior efficiencies and
the time measured. Per family, one multiplier per term is fitted (ridge toward 1, on relative
error); a leave-one-device-out check states the error to expect on a device not yet measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossinfer.bench.fingerprint import fingerprint_key
from crossinfer.bench.result import BenchResult
from crossinfer.errors import CrossinferError
from crossinfer.hardware.catalog import Catalog, CatalogDevice
from crossinfer.predict.cost import ModelCost
from crossinfer.predict.roofline import TERMS, HardwareTarget, Scales, time_terms

__all__ = [
    "Calibration",
    "LodoRow",
    "Observation",
    "calibrate",
    "group_name",
    "observation",
    "target_for",
]

# A light pull toward the prior, relative to the data's own weight: a term seen in no run keeps
# its prior, and collinear terms split the time the way the prior does, while a term the runs
# do measure is barely biased (a stronger pull cost 5-10% here, see tests/predict).
_RIDGE = 1e-3
_MIN_FACTOR = 0.05
_USABLE_SCENARIOS = ("offline", "singlestream")
# Other work beyond this share of the cores, while a run ran, leaves it out of the fit: a loaded
# 2-core machine measured ResNet-50 at 50x its idle time (docs/benchmarks.md)
_BUSY_SHARE = 0.5
ModelLoader = Callable[[str, str], ModelCost | None]  # (source, sha256) -> cost, None if gone


@dataclass(frozen=True)
class Observation:
    """One measured run as the fit sees it."""

    device_key: str  # the hardware fingerprint key plus the device kind: one measured device
    device_name: str  # "Intel Sapphire Rapids core x2", "NVIDIA H200 SXM"
    family: str
    model: str
    precision: str
    batch: int
    scenario: str
    measured_s: float  # seconds per batch (Offline: batch / throughput; SingleStream: p50)
    terms: Mapping[str, float]  # unscaled roofline seconds per term
    fixed_s: float  # host-link time, not scaled

    @property
    def group(self) -> str:
        return group_name(self.family, self.precision)

    def predicted(self, scales: Scales) -> float:
        return self.fixed_s + sum(scales.factor(t) * v for t, v in self.terms.items())


def group_name(family: str, precision: str) -> str:
    """Factors are fitted per device family and precision class: a CPU's AMX BF16 or VNNI INT8
    path reaches a different share of its peak than its FP32 FMA units do."""
    kind = {"fp16": "16-bit", "bf16": "16-bit", "fp8": "int8"}.get(precision, precision)
    return f"{family} {kind}"


@dataclass(frozen=True)
class LodoRow:
    """A run predicted with the factors fitted without its device."""

    device_name: str
    family: str  # the calibration group: family and precision class
    model: str
    precision: str
    batch: int
    measured_s: float
    predicted_s: float

    @property
    def error(self) -> float:
        return self.predicted_s / self.measured_s - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device_name,
            "family": self.family,
            "model": self.model,
            "precision": self.precision,
            "batch": self.batch,
            "measured_ms": self.measured_s * 1e3,
            "predicted_ms": self.predicted_s * 1e3,
            "error_pct": self.error * 100,
        }


@dataclass(frozen=True)
class Calibration:
    """Fitted factors per family, the leave-one-device-out rows, and what was left out."""

    scales: Mapping[str, Scales]
    lodo: tuple[LodoRow, ...] = ()
    observations: int = 0
    skipped: tuple[str, ...] = ()
    devices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # family -> devices

    def scales_for(self, family: str, precision: str) -> Scales:
        group = group_name(family, precision)
        return self.scales.get(group) or Scales(group)

    def to_dict(self) -> dict[str, Any]:
        return {
            "observations": self.observations,
            "families": {
                family: {
                    "factors": dict(s.factors),
                    "source": s.source,
                    "error": s.error,
                    "devices": list(self.devices.get(family, ())),
                }
                for family, s in self.scales.items()
            },
            "leave_one_device_out": [row.to_dict() for row in self.lodo],
            "skipped": list(self.skipped),
        }


def target_for(catalog: Catalog, result: BenchResult) -> tuple[HardwareTarget | None, str]:
    """The catalog device a stored run ran on, or None and why not."""
    hardware = result.hardware
    device_name = result.device.lower()
    if device_name.startswith(("cuda", "gpu")):
        gpus = hardware.get("gpus") or []
        if not gpus:
            return None, f"run {result.backend}:{result.device} has no GPU in its fingerprint"
        name = str(gpus[0].get("name", ""))
        device = catalog.device_for(name)
        if device is None:
            return None, f"GPU '{name}' is not in the catalog"
        return HardwareTarget(name=device.name, device=device), ""
    if device_name != "cpu":
        return None, f"device '{result.device}' is neither a CPU nor a CUDA GPU"
    cpu = hardware.get("cpu") or {}
    core = _cpu_core(catalog, str(cpu.get("model", "")), str(cpu.get("vendor", "")), cpu)
    if core is None:
        return None, f"CPU '{cpu.get('model', '?')}' matches no cpu-core device in the catalog"
    logical = int(cpu.get("logical_cores") or 1)
    threads = result.settings.get("threads")
    instances = int(result.settings.get("instances") or 1)
    cores = min(logical, int(threads) * instances) if threads else logical
    return HardwareTarget(name=f"{core.name} x{cores}", device=core, cores=cores), ""


def _cpu_core(
    catalog: Catalog, model: str, vendor: str, cpu: Mapping[str, Any]
) -> CatalogDevice | None:
    cores = [d for d in catalog.devices if d.kind == "cpu-core"]
    # the longest match wins: "AMD EPYC 9R45" is a Zen 5 though "AMD EPYC 9" names Zen 4 parts
    matched = [(len(m), d) for d in cores for m in d.match if m.lower() in model.lower()]
    if matched:
        return max(matched, key=lambda pair: pair[0])[1]
    # a guest often reports a generic name ("Intel(R) Xeon(R) Processor"): judge by the ISA
    flags = set(cpu.get("isa_flags") or ())
    amd = "amd" in (vendor + model).lower()
    if "amx_int8" in flags:
        wanted = "Intel Sapphire Rapids core"
    elif amd and "avx512_vp2intersect" in flags:  # AMD has it from Zen 5 on
        wanted = "AMD Zen 5 core"
    elif amd and "avx512f" in flags:
        wanted = "AMD Zen 4 core"
    elif amd:
        wanted = "AMD Zen 1 core"
    elif "avx512_vnni" in flags:
        wanted = "Intel Ice Lake core"
    else:
        return None
    return next((d for d in cores if d.name == wanted), None)


def observation(
    catalog: Catalog, result: BenchResult, cost: ModelCost
) -> tuple[Observation | None, str]:
    """A stored run as an observation, or None and why it cannot be one."""
    if result.scenario not in _USABLE_SCENARIOS:
        return None, f"{result.scenario} runs are not used (only Offline and SingleStream)"
    if not result.stability.stable:
        # a loaded machine's run would teach the fit that the hardware is slow
        return None, (
            f"unstable run (measurement windows spread {result.stability.spread_pct:.0f}%, "
            f"over the {result.stability.threshold_pct:.0f}% asked): measure again on an idle machine"
        )
    target, reason = target_for(catalog, result)
    if target is None:
        return None, reason
    busy, logical = _other_load(result)
    if busy is not None and busy > _BUSY_SHARE * logical:
        return None, (
            f"busy machine (1-minute load average {result.load_average:.1f} on {logical} "
            "core(s), the run's own threads aside): measure again on an idle one"
        )
    precision = result.precision
    if target.peak_flops(precision) is None:
        return None, f"{target.name} has no {precision} peak in the catalog"
    batch = max(result.batch_size, 1)
    if result.scenario == "offline":
        if result.throughput <= 0:
            return None, "offline run with no throughput"
        measured = batch / result.throughput
    else:
        measured = result.latency.p50_ms / 1e3
    if measured <= 0:
        return None, "run with no measured time"
    terms = time_terms(cost, target, precision, batch, Scales(target.family))
    kind = "gpu" if result.device.lower() != "cpu" else "cpu"
    return (
        Observation(
            device_key=f"{fingerprint_key(result.hardware)}:{kind}",
            device_name=target.name,
            family=target.family,
            model=result.model_source,
            precision=precision,
            batch=batch,
            scenario=result.scenario,
            measured_s=measured,
            terms=dict(terms.by_term),
            fixed_s=terms.host_link_s,
        ),
        "",
    )


def _other_load(result: BenchResult) -> tuple[float | None, int]:
    """Runnable work other than the run's own threads (from the load average bench records),
    and the machine's logical cores."""
    logical = int((result.hardware.get("cpu") or {}).get("logical_cores") or 1)
    load = result.load_average
    if load is None or result.device.lower() != "cpu":
        return None, logical  # a GPU run's host threads do not share the device with anything
    threads = result.settings.get("threads") or logical
    instances = int(result.settings.get("instances") or 1)
    return float(load) - min(int(threads) * instances, logical), logical


def fit(observations: Iterable[Observation], group: str) -> Scales:
    """Ridge least squares of the relative error: sum_i (pred_i / measured_i - 1)^2."""
    rows = [o for o in observations if o.group == group]
    if not rows:
        return Scales(group)
    a = np.array([[o.terms.get(t, 0.0) / o.measured_s for t in TERMS] for o in rows])
    b = np.array([1.0 - o.fixed_s / o.measured_s for o in rows])
    gram = a.T @ a
    ridge = _RIDGE * max(float(np.trace(gram)) / len(TERMS), 1e-12)
    lhs = gram + ridge * np.eye(len(TERMS))
    rhs = a.T @ b + ridge * np.ones(len(TERMS))
    solved = np.linalg.solve(lhs, rhs)
    factors = {t: float(max(v, _MIN_FACTOR)) for t, v in zip(TERMS, solved, strict=True)}
    devices = len({o.device_key for o in rows})
    return Scales(group, factors, source=f"fitted on {len(rows)} runs of {devices} device(s)")


def calibrate(results: Iterable[BenchResult], catalog: Catalog, load: ModelLoader) -> Calibration:
    """Fit every family's factors from `results`; state each family's leave-one-device-out error."""
    observations: list[Observation] = []
    skipped: list[str] = []
    for result in results:
        try:
            cost = load(result.model_source, result.model_sha256)
        except CrossinferError as exc:
            skipped.append(f"{result.model_source}: {exc}")
            continue
        if cost is None:
            skipped.append(f"{result.model_source}: the model is gone or changed since the run")
            continue
        found, reason = observation(catalog, result, cost)
        if found is None:
            skipped.append(f"{result.model_source} on {result.backend}:{result.device}: {reason}")
        else:
            observations.append(found)
    lodo: list[LodoRow] = []
    for key, group in sorted({(o.device_key, o.group) for o in observations}):
        held_out = [o for o in observations if o.device_key == key and o.group == group]
        without = fit((o for o in observations if o.device_key != key), group)
        lodo.extend(
            LodoRow(o.device_name, group, o.model, o.precision, o.batch, o.measured_s,
                    o.predicted(without))
            for o in held_out
        )  # fmt: skip
    scales: dict[str, Scales] = {}
    devices: dict[str, tuple[str, ...]] = {}
    for group in sorted({o.group for o in observations}):
        fitted = fit(observations, group)
        names = tuple(sorted({o.device_name for o in observations if o.group == group}))
        devices[group] = names
        errors = [abs(r.error) for r in lodo if r.family == group]
        keys = {o.device_key for o in observations if o.group == group}
        if len(keys) < 2:
            # held out, its group had no other device: the check measured the prior only
            error = (
                f"uncalibrated for other devices ({group} measured on one device only; the "
                f"prior's error there: median {statistics.median(errors) * 100:.0f}%)"
            )
        else:
            error = (
                f"±{statistics.median(errors) * 100:.0f}% median, worst "
                f"{max(errors) * 100:.0f}% (leave-one-device-out, {len(keys)} devices, "
                f"{len(errors)} runs)"
            )
        scales[group] = Scales(group, fitted.factors, fitted.source, error)
    return Calibration(
        scales=scales,
        lodo=tuple(lodo),
        observations=len(observations),
        skipped=tuple(skipped),
        devices=devices,
    )
