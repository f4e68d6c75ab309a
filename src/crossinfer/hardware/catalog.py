"""The hardware catalog: instance prices (with date and source) and device peak figures.

`tune` turns throughput into cost per million inferences with it; the price of the machine it
runs on is never guessed: the user names an instance (`--instance`) or a price.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from crossinfer.errors import CrossinferError

__all__ = [
    "Catalog",
    "CatalogDevice",
    "CatalogError",
    "Instance",
    "Price",
    "load_catalog",
    "resolve_price",
]

CATALOG_VERSION = 1


class CatalogError(CrossinferError):
    """A catalog file cannot be read, or names an instance it does not have."""


@dataclass(frozen=True)
class CatalogDevice:
    """Peak figures of one processor, with where they come from."""

    name: str
    kind: str  # "gpu", "tpu", "accelerator", "cpu-core"
    source: str
    unconfirmed: bool = False
    match: tuple[str, ...] = ()  # substrings of a discovered device name that mean this one
    peak_tflops: Mapping[str, float] = field(default_factory=dict)  # precision -> dense TFLOP/s
    flops_per_cycle: Mapping[str, float] = field(default_factory=dict)
    memory_gb: float | None = None
    memory_bandwidth_gbs: float | None = None
    power_w: float | None = None


@dataclass(frozen=True)
class Instance:
    """A cloud instance type and its on-demand price."""

    name: str
    provider: str
    region: str
    price_per_hour: float  # USD
    price_date: str
    source: str
    unconfirmed: bool = False
    vcpus: int | None = None
    memory_gib: float | None = None
    cpu: str = ""
    gpus: int = 0
    gpu: str = ""
    note: str = ""


@dataclass(frozen=True)
class Price:
    """The price per hour a cost figure is computed from, and how it was chosen."""

    per_hour: float  # USD
    source: str  # "c7a.large, aws us-east-1, 2024-06, https://...", "--price-per-hour"
    unconfirmed: bool = False


@dataclass(frozen=True)
class Catalog:
    devices: tuple[CatalogDevice, ...]
    instances: tuple[Instance, ...]
    path: str  # where it was read from ("built-in" for the packaged file)

    def instance(self, name: str) -> Instance:
        for instance in self.instances:
            if instance.name.lower() == name.lower():
                return instance
        known = ", ".join(i.name for i in self.instances)
        raise CatalogError(
            f"instance '{name}' is not in the hardware catalog ({self.path}); known: {known}; "
            "or give --price-per-hour, or --catalog FILE with an [[instance]] entry for it"
        )

    def device_for(self, description: str) -> CatalogDevice | None:
        """The catalog entry a discovered device name ("NVIDIA H100 80GB HBM3") matches."""
        text = description.lower()
        for device in self.devices:
            if any(m.lower() in text for m in device.match):
                return device
        return None

    def merged(self, other: Catalog) -> Catalog:
        """This catalog with `other`'s entries replacing those of the same name."""
        devices = {d.name.lower(): d for d in self.devices}
        devices.update({d.name.lower(): d for d in other.devices})
        instances = {i.name.lower(): i for i in self.instances}
        instances.update({i.name.lower(): i for i in other.instances})
        return Catalog(
            tuple(devices.values()), tuple(instances.values()), f"{self.path} + {other.path}"
        )


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The built-in catalog, with the entries of `path` (a user's TOML file) laid over it."""
    text = resources.files("crossinfer.hardware").joinpath("catalog.toml").read_text("utf-8")
    built_in = _parse(text, "built-in catalog")
    if path is None:
        return built_in
    path = Path(path)
    try:
        user_text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"catalog {path} cannot be read: {exc}") from exc
    return built_in.merged(_parse(user_text, str(path)))


def resolve_price(
    catalog: Catalog, *, instance: str | None, price_per_hour: float | None
) -> Price | None:
    """The price to cost with: --price-per-hour wins, then --instance; None when neither is given."""
    if price_per_hour is not None:
        if price_per_hour <= 0:
            raise CatalogError(f"--price-per-hour must be positive, got {price_per_hour}")
        where = f" (instance {instance} named too: the price given wins)" if instance else ""
        return Price(price_per_hour, f"--price-per-hour {price_per_hour:g}{where}")
    if instance is None:
        return None
    found = catalog.instance(instance)
    source = (
        f"{found.name}, {found.provider} {found.region}, on-demand as of {found.price_date}, "
        f"{found.source}"
    )
    if found.unconfirmed:
        source += " (unconfirmed: not re-checked against the live page)"
    return Price(found.price_per_hour, source, unconfirmed=found.unconfirmed)


# --------------------------------------------------------------------------- parsing


def _parse(text: str, where: str) -> Catalog:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog {where} is not valid TOML: {exc}") from exc
    version = document.get("catalog_version", CATALOG_VERSION)
    if not isinstance(version, int) or version > CATALOG_VERSION:
        raise CatalogError(
            f"catalog {where} has catalog_version {version!r}; this crossinfer reads up to "
            f"{CATALOG_VERSION}"
        )
    unknown = set(document) - {"catalog_version", "device", "instance"}
    if unknown:
        raise CatalogError(
            f"catalog {where}: unknown top-level key(s) {sorted(unknown)}; "
            "expected [[device]] and [[instance]] tables"
        )
    devices = tuple(
        _device(raw, f"{where} device #{i + 1}") for i, raw in enumerate(document.get("device", []))
    )
    instances = tuple(
        _instance(raw, f"{where} instance #{i + 1}")
        for i, raw in enumerate(document.get("instance", []))
    )
    return Catalog(devices, instances, where)


def _device(raw: Any, where: str) -> CatalogDevice:
    data = _table(raw, where)
    _require(data, where, ("name", "kind", "source"))
    return CatalogDevice(
        name=str(data["name"]),
        kind=str(data["kind"]),
        source=str(data["source"]),
        unconfirmed=bool(data.get("unconfirmed", False)),
        match=tuple(str(m) for m in data.get("match", [])),
        peak_tflops=_numbers(data.get("peak_tflops", {}), f"{where} peak_tflops"),
        flops_per_cycle=_numbers(data.get("flops_per_cycle", {}), f"{where} flops_per_cycle"),
        memory_gb=_optional_number(data, "memory_gb", where),
        memory_bandwidth_gbs=_optional_number(data, "memory_bandwidth_gbs", where),
        power_w=_optional_number(data, "power_w", where),
    )


def _instance(raw: Any, where: str) -> Instance:
    data = _table(raw, where)
    _require(data, where, ("name", "provider", "price_per_hour", "price_date", "source"))
    price = _optional_number(data, "price_per_hour", where)
    if price is None or price <= 0:
        raise CatalogError(f"{where} ({data['name']}): price_per_hour must be a positive number")
    vcpus = data.get("vcpus")
    return Instance(
        name=str(data["name"]),
        provider=str(data["provider"]),
        region=str(data.get("region", "")),
        price_per_hour=price,
        price_date=str(data["price_date"]),
        source=str(data["source"]),
        unconfirmed=bool(data.get("unconfirmed", False)),
        vcpus=int(vcpus) if isinstance(vcpus, int) else None,
        memory_gib=_optional_number(data, "memory_gib", where),
        cpu=str(data.get("cpu", "")),
        gpus=int(data.get("gpus", 0)),
        gpu=str(data.get("gpu", "")),
        note=str(data.get("note", "")),
    )


def _table(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where} must be a table")
    return raw


def _require(data: Mapping[str, Any], where: str, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise CatalogError(
            f"{where}: missing key(s) {missing} (every price needs a date and source)"
        )


def _optional_number(data: Mapping[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _numbers(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where} must be a table of numbers")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CatalogError(f"{where}.{key} must be a number, got {value!r}")
        out[str(key)] = float(value)
    return out
