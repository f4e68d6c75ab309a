"""Energy of a benchmark run from hardware counters: NVML's GPU energy counter and Linux RAPL.

`EnergyMeter` reads the counters on entry and exit; with none readable it says why, and never
estimates from TDP.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from crossinfer.bench.result import EnergyReading
from crossinfer.hardware.nvml import Nvml, open_nvml

__all__ = ["POWERCAP_ROOT", "EnergyMeter", "RaplZone", "rapl_delta_uj", "rapl_zones"]

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class RaplZone:
    """One top-level RAPL package counter (``intel-rapl:N``, also used by AMD's driver)."""

    name: str  # "package-0"
    energy_path: Path  # .../energy_uj
    max_energy_range_uj: int  # the counter wraps back to 0 after this

    def read_uj(self) -> int:
        return int(self.energy_path.read_text().strip())


def rapl_zones(root: Path = POWERCAP_ROOT) -> tuple[list[RaplZone], str]:
    """Readable package zones under `root`, or an empty list and why there are none.

    Only top-level ``package-*`` zones are summed: sub-zones (core, uncore, dram) are parts of
    a package, and ``psys`` covers the packages too, so adding them would count energy twice.
    """
    if not root.is_dir():
        return [], f"{root} absent: no RAPL driver, or a VM that hides it"
    zones: list[RaplZone] = []
    problems: list[str] = []
    for zone_dir in sorted(root.glob("intel-rapl:*")):
        if zone_dir.name.count(":") != 1:
            continue  # a sub-zone, e.g. intel-rapl:0:0 (core)
        try:
            name = (zone_dir / "name").read_text().strip()
        except OSError as exc:
            problems.append(f"{zone_dir.name}: {exc.strerror or exc}")
            continue
        if not name.startswith("package"):
            continue
        try:
            zone = RaplZone(
                name=name,
                energy_path=zone_dir / "energy_uj",
                max_energy_range_uj=int((zone_dir / "max_energy_range_uj").read_text().strip()),
            )
            zone.read_uj()
        except PermissionError:
            # Linux made energy_uj root-only in 2020 (CVE-2020-8694, the PLATYPUS attack).
            problems.append(f"{zone_dir.name}/energy_uj not readable without root")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{zone_dir.name}: {exc}")
            continue
        zones.append(zone)
    if zones:
        return zones, ""
    if problems:
        return [], "; ".join(problems)
    return [], f"no intel-rapl package zone under {root}"


def rapl_delta_uj(start_uj: int, end_uj: int, max_energy_range_uj: int) -> int:
    """Energy between two readings of one RAPL counter, across at most one wraparound."""
    if end_uj >= start_uj:
        return end_uj - start_uj
    return max_energy_range_uj - start_uj + end_uj


class EnergyMeter:
    """Energy used inside a ``with`` block: NVML per GPU (Volta and newer) plus RAPL packages.

    `gpu_indices`: None measures every GPU NVML lists, an empty sequence none (a CPU run).
    RAPL is read every `poll_s` as well, so a run longer than one wrap of the counter still
    adds up (the counter wraps after max_energy_range_uj, minutes at full package power).
    """

    def __init__(
        self,
        *,
        gpu_indices: Sequence[int] | None = None,
        rapl: bool = True,
        powercap_root: Path = POWERCAP_ROOT,
        poll_s: float = 10.0,
    ) -> None:
        self._gpu_indices = None if gpu_indices is None else tuple(gpu_indices)
        self._rapl = rapl
        self._root = powercap_root
        self._poll_s = poll_s
        self._nvml: Nvml | None = None
        self._gpu_handles: list[tuple[int, Any]] = []
        self._gpu_start_mj: list[int] = []
        self._zones: list[RaplZone] = []
        self._rapl_last: list[int] = []
        self._rapl_total_uj: list[int] = []
        self._rapl_error = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.gpu_reason = ""
        self.rapl_reason = ""
        self.parts: dict[str, float] = {}  # label -> joules, once the block has ended
        self.joules: float | None = None
        self.method = "not measured: the meter has not run"

    def __enter__(self) -> EnergyMeter:
        self._open_gpus()
        if self._rapl:
            self._zones, self.rapl_reason = rapl_zones(self._root)
            self._rapl_last = [zone.read_uj() for zone in self._zones]
            self._rapl_total_uj = [0] * len(self._zones)
            if self._zones:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._poll, name="crossinfer-rapl", daemon=True
                )
                self._thread.start()
        else:
            self.rapl_reason = "RAPL not asked for"
        for _, handle in self._gpu_handles:
            assert self._nvml is not None and self._nvml.lib is not None
            lib = self._nvml.lib
            self._gpu_start_mj.append(int(lib.nvmlDeviceGetTotalEnergyConsumption(handle)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        parts: dict[str, float] = {}
        for (index, handle), start in zip(self._gpu_handles, self._gpu_start_mj, strict=True):
            assert self._nvml is not None and self._nvml.lib is not None
            end = int(self._nvml.lib.nvmlDeviceGetTotalEnergyConsumption(handle))
            parts[f"GPU {index}"] = (end - start) / 1000.0
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._zones:
            self._read_rapl()
        if self._rapl_error:
            self.rapl_reason = self._rapl_error
        elif self._zones:
            for zone, total in zip(self._zones, self._rapl_total_uj, strict=True):
                parts[f"RAPL {zone.name}"] = total / 1e6
        self.parts = parts
        self.joules = sum(parts.values()) if parts else None
        self.method = self._describe(parts)

    def reading(self, inferences: int) -> EnergyReading:
        """The block's energy, per inference too, labelled with how it was measured."""
        if self.joules is None:
            return EnergyReading(joules=None, joules_per_inference=None, method=self.method)
        per = self.joules / inferences if inferences > 0 else None
        return EnergyReading(joules=self.joules, joules_per_inference=per, method=self.method)

    # internals

    def _describe(self, parts: dict[str, float]) -> str:
        labels: list[str] = []
        gpus = [label.removeprefix("GPU ") for label in parts if label.startswith("GPU ")]
        if gpus:
            labels.append(f"NVML total energy counter (GPU {','.join(gpus)})")
        packages = [label.removeprefix("RAPL ") for label in parts if label.startswith("RAPL ")]
        if packages:
            labels.append(f"RAPL {'+'.join(packages)}")
        if labels:
            return " + ".join(labels)
        return f"not measured: no RAPL counter readable ({self.rapl_reason}) and {self.gpu_reason}"

    def _open_gpus(self) -> None:
        if self._gpu_indices == ():
            self.gpu_reason = "no GPU used"
            return
        opened = open_nvml()
        if opened.lib is None:
            self.gpu_reason = f"no NVIDIA GPU energy ({opened.reason})"
            return
        nvml = opened.lib
        handles: list[tuple[int, Any]] = []
        problems: list[str] = []
        try:
            indices = self._gpu_indices
            if indices is None:
                indices = tuple(range(int(nvml.nvmlDeviceGetCount())))
            for index in indices:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                try:
                    nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                except Exception as exc:
                    # NOT_SUPPORTED before Volta, and on some vGPU setups
                    problems.append(f"GPU {index}: energy counter unsupported ({exc})")
                    continue
                handles.append((index, handle))
        except Exception as exc:
            problems.append(f"NVML query failed ({exc})")
        if not handles:
            opened.close()
            self.gpu_reason = "; ".join(problems) if problems else "NVML lists no NVIDIA GPU"
            return
        self._nvml = opened
        self._gpu_handles = handles
        self.gpu_reason = "; ".join(problems)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_s):
            self._read_rapl()

    def _read_rapl(self) -> None:
        with self._lock:
            if self._rapl_error:
                return
            try:
                for i, zone in enumerate(self._zones):
                    now = zone.read_uj()
                    self._rapl_total_uj[i] += rapl_delta_uj(
                        self._rapl_last[i], now, zone.max_energy_range_uj
                    )
                    self._rapl_last[i] = now
            except (OSError, ValueError) as exc:
                # A counter lost mid-run gives a partial sum: report none rather than too little.
                self._rapl_error = f"RAPL read failed during the run ({exc})"
