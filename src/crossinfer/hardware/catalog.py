"""The hardware catalog: instance prices (with date and source) and device peak figures.

The file's schema is declared below (`_DEVICE`, `_INSTANCE`): strict, an unknown key is refused
with the nearest declared one, and a value of the wrong type is refused rather than coerced.

`tune` turns throughput into cost per million inferences with it; the price of the machine it
runs on is never guessed: the user names an instance (`--instance`) or a price.
"""

from __future__ import annotations

import datetime
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from crossinfer import schema
from crossinfer.errors import CatalogError
from crossinfer.schema import Key

__all__ = [
    "Catalog",
    "CatalogDevice",
    "Instance",
    "Price",
    "load_catalog",
    "resolve_price",
]

CATALOG_VERSION = 1


@dataclass(frozen=True, kw_only=True)
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
    # what `crossinfer predict` needs besides the peaks (hardware not present is predicted)
    family: str = ""  # devices calibrated together: "nvidia-gpu", "google-tpu", "x86-cpu", ...
    date: str = ""  # when the figures were written down from their source
    clock_ghz: float | None = None  # cpu-core: sustained all-core clock the peaks assume
    on_chip_mb: float | None = None  # L2 / SRAM / CMEM a model's weights may stay in
    on_chip_bandwidth_gbs: float | None = None
    host_link: str = ""  # "PCIe Gen5 x16"
    host_link_gbs: float | None = None  # per direction, as a transfer reaches it
    kernel_overhead_us: float | None = None  # fixed cost of each fused kernel (launch, sync)
    call_overhead_us: float | None = None  # fixed cost of each inference call (dispatch)
    unsupported_ops: tuple[str, ...] = ()  # ONNX ops that fall back to the host
    supported_ops: tuple[str, ...] = ()  # when given: every other op falls back to the host
    op_support: str = ""  # what the vendor's compiler takes, in words
    figures_unconfirmed: tuple[str, ...] = ()  # the fields whose figure is weak or derived

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions it computes in natively (those with a peak figure)."""
        return tuple(self.peak_tflops or self.flops_per_cycle)


@dataclass(frozen=True, kw_only=True)
class Instance:
    """A cloud instance type and its on-demand price."""

    name: str
    provider: str
    region: str = ""
    price_per_hour: float  # USD
    price_date: str
    source: str
    unconfirmed: bool = False
    vcpus: int | None = None
    memory_gib: float | None = None
    cpu: str = ""
    gpus: int = 0
    gpu: str = ""  # the accelerator's catalog device name (a GPU, TPU, Inferentia, ...)
    note: str = ""
    cpu_device: str = ""  # the catalog's cpu-core device the vCPUs are
    physical_cores: int | None = None  # vCPUs are SMT threads on most Intel instances


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

    def device(self, name: str) -> CatalogDevice:
        """The device of that name (case-insensitive)."""
        for device in self.devices:
            if device.name.lower() == name.lower():
                return device
        known = ", ".join(d.name for d in self.devices)
        raise CatalogError(
            f"device '{name}' is not in the hardware catalog ({self.path}); known: {known}; "
            "or add a [[device]] entry with --catalog FILE"
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


_KINDS = ("gpu", "tpu", "accelerator", "npu", "fpga", "cpu-core")


def _date(value: Any) -> str:
    # TOML reads price_date = 2024-06-01 (unquoted) as a date: as good as the string
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(schema.text()(value))


def _tables(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of tables ([[...]]), got {value!r}")
    return value


_DOCUMENT: dict[str, Key | schema.Check] = {
    "catalog_version": schema.integer(minimum=1),
    "device": _tables,
    "instance": _tables,
}

_DEVICE: dict[str, Key | schema.Check] = {
    "name": Key(schema.text(), required=True),
    "kind": Key(schema.one_of(_KINDS), required=True),
    "source": Key(schema.text(), required=True),  # every figure names where it comes from
    "unconfirmed": schema.boolean,
    "match": schema.text_list,
    "peak_tflops": schema.number_table,
    "flops_per_cycle": schema.number_table,
    "memory_gb": schema.number(positive=True),
    "memory_bandwidth_gbs": schema.number(positive=True),
    "power_w": schema.number(positive=True),
    "family": schema.text(),
    "date": _date,
    "clock_ghz": schema.number(positive=True),
    "on_chip_mb": schema.number(positive=True),
    "on_chip_bandwidth_gbs": schema.number(positive=True),
    "host_link": schema.text(),
    "host_link_gbs": schema.number(positive=True),
    "kernel_overhead_us": schema.number(),
    "call_overhead_us": schema.number(),
    "unsupported_ops": schema.text_list,
    "supported_ops": schema.text_list,
    "op_support": schema.text(),
    "figures_unconfirmed": schema.text_list,
}

_INSTANCE: dict[str, Key | schema.Check] = {
    "name": Key(schema.text(), required=True),
    "provider": Key(schema.text(), required=True),
    "region": schema.text(),
    # every price needs a date and a source
    "price_per_hour": Key(schema.number(positive=True), required=True),
    "price_date": Key(_date, required=True),
    "source": Key(schema.text(), required=True),
    "unconfirmed": schema.boolean,
    "vcpus": schema.integer(minimum=1),
    "memory_gib": schema.number(positive=True),
    "cpu": schema.text(),
    "gpus": schema.integer(minimum=0),
    "gpu": schema.text(),
    "note": schema.text(),
    "cpu_device": schema.text(),
    "physical_cores": schema.integer(minimum=1),
}


def _parse(text: str, where: str) -> Catalog:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog {where} is not valid TOML: {exc}") from exc
    label = f"catalog {where}"
    version = document.get("catalog_version", CATALOG_VERSION)
    if not isinstance(version, int) or version > CATALOG_VERSION:
        raise CatalogError(
            f"{label} has catalog_version {version!r}; this crossinfer reads up to "
            f"{CATALOG_VERSION}"
        )
    top = schema.read_table(document, _DOCUMENT, where=label, error=CatalogError)
    devices = tuple(
        CatalogDevice(**_read(raw, _DEVICE, label, f"device #{i + 1}"))
        for i, raw in enumerate(top.get("device", []))
    )
    instances = tuple(
        Instance(**_read(raw, _INSTANCE, label, f"instance #{i + 1}"))
        for i, raw in enumerate(top.get("instance", []))
    )
    return Catalog(devices, instances, where)


def _read(raw: Any, declared: dict[str, Key | schema.Check], where: str, table: str) -> Any:
    name = raw.get("name") if isinstance(raw, dict) else None
    if isinstance(name, str):
        table = f"{table} ({name})"
    return schema.read_table(raw, declared, where=where, table=table, error=CatalogError)
