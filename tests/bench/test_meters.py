"""PeakMemory and EnergyMeter on this machine, with fake NVML modules and a fake powercap tree."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from crossinfer.bench.energy import POWERCAP_ROOT, EnergyMeter, rapl_delta_uj, rapl_zones
from crossinfer.bench.memory import PeakMemory

MB = 1024 * 1024


class FakeNvmlError(Exception):
    pass


def fake_nvml(
    *,
    processes: list[Any] | None = None,
    used_bytes: int = 0,
    energy_mj: list[int] | None = None,
) -> ModuleType:
    """A pynvml stand-in with one GPU; energy readings are handed out in order."""
    module = ModuleType("pynvml")
    readings = list(energy_mj or [])
    calls = {"init": 0, "shutdown": 0}

    def init() -> None:
        calls["init"] += 1

    def shutdown() -> None:
        calls["shutdown"] += 1

    def energy(handle: str) -> int:
        if not readings:
            raise FakeNvmlError("Not Supported")
        return readings.pop(0) if len(readings) > 1 else readings[0]

    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = shutdown  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"  # type: ignore[attr-defined]
    module.nvmlDeviceGetComputeRunningProcesses = lambda h: list(processes or [])  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=used_bytes)  # type: ignore[attr-defined]
    module.nvmlDeviceGetTotalEnergyConsumption = energy  # type: ignore[attr-defined]
    module.calls = calls  # type: ignore[attr-defined]
    return module


def nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


# --- PeakMemory -----------------------------------------------------------------------------


def test_peak_rss_sees_a_200_mb_array() -> None:
    with PeakMemory(interval_s=0.005) as meter:
        block = np.ones(200 * MB // 8)  # float64, every page written
        time.sleep(0.03)
        del block
    assert meter.peak_rss_mb - meter.baseline_rss_mb >= 150
    assert meter.samples >= 2
    assert meter.sampler_error is None


def test_gpu_memory_on_this_machine() -> None:
    with PeakMemory() as meter:
        pass
    if nvml_works():
        assert meter.peak_device_mem_mb is not None
        assert meter.device_mem_method.startswith("NVML")
    else:
        assert meter.peak_device_mem_mb is None
        assert meter.device_mem_reason.startswith("not measured: ")


def test_gpu_memory_of_this_process_from_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_nvml(
        processes=[
            SimpleNamespace(pid=os.getpid(), usedGpuMemory=512 * MB),
            SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=4096 * MB),
        ],
        used_bytes=8192 * MB,
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with PeakMemory(interval_s=0.001) as meter:
        time.sleep(0.01)
    assert meter.peak_device_mem_mb == 512
    assert meter.device_mem_method == "NVML memory used by this process (GPU 0)"
    assert nvml.calls == {"init": 1, "shutdown": 1}


def test_gpu_memory_falls_back_to_the_device_when_nvml_hides_our_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # in a container NVML lists host pids: ours is never there
    nvml = fake_nvml(
        processes=[SimpleNamespace(pid=1, usedGpuMemory=100 * MB)], used_bytes=3000 * MB
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with PeakMemory(interval_s=0.001) as meter:
        pass
    assert meter.peak_device_mem_mb == 3000
    assert "all processes" in meter.device_mem_method


# --- EnergyMeter ----------------------------------------------------------------------------


def _rapl_readable(root: Path) -> bool:
    for path in root.glob("intel-rapl:*/energy_uj"):
        try:
            path.read_text()
        except OSError:
            continue
        return True
    return False


def test_energy_on_this_machine_is_measured_or_says_why() -> None:
    with EnergyMeter(gpu_indices=()) as meter:
        time.sleep(0.01)
    reading = meter.reading(inferences=10)
    if _rapl_readable(POWERCAP_ROOT):
        assert reading.joules is not None and reading.joules >= 0
        assert reading.method.startswith("RAPL package")
    else:
        assert reading.joules is None and reading.joules_per_inference is None
        assert reading.method.startswith("not measured: no RAPL counter readable (")
        assert "no GPU used" in reading.method


def test_energy_from_the_nvml_counter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # one probe read on opening, then start and end
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(energy_mj=[1000, 1000, 4500]))
    with EnergyMeter(powercap_root=tmp_path / "absent") as meter:
        pass
    reading = meter.reading(inferences=7)
    assert reading.joules == pytest.approx(3.5)
    assert reading.joules_per_inference == pytest.approx(0.5)
    assert reading.method == "NVML total energy counter (GPU 0)"


def test_a_gpu_without_an_energy_counter_is_not_guessed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(energy_mj=[]))
    with EnergyMeter(powercap_root=tmp_path / "absent") as meter:
        pass
    reading = meter.reading(inferences=7)
    assert reading.joules is None
    assert reading.method.startswith("not measured: no RAPL counter readable (")
    assert "GPU 0: energy counter unsupported (Not Supported)" in reading.method


def _zone(root: Path, name: str, dirname: str, energy: int, max_range: int) -> Path:
    zone = root / dirname
    zone.mkdir(parents=True)
    (zone / "name").write_text(name + "\n")
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone / "energy_uj"


def test_rapl_delta_across_a_wraparound() -> None:
    assert rapl_delta_uj(100, 350, 1000) == 250
    assert rapl_delta_uj(900, 50, 1000) == 150


def test_rapl_packages_with_a_wraparound(tmp_path: Path) -> None:
    package = _zone(tmp_path, "package-0", "intel-rapl:0", 999_000_000, 1_000_000_000)
    core = _zone(tmp_path, "core", "intel-rapl:0:0", 5, 1_000_000_000)  # a part of package-0
    psys = _zone(tmp_path, "psys", "intel-rapl:1", 5, 1_000_000_000)  # covers the packages
    with EnergyMeter(gpu_indices=(), powercap_root=tmp_path) as meter:
        package.write_text("1000000\n")  # wrapped: 1 J to the top, 1 J after
        core.write_text("900000000\n")
        psys.write_text("900000000\n")
    reading = meter.reading(inferences=4)
    assert reading.joules == pytest.approx(2.0)
    assert reading.joules_per_inference == pytest.approx(0.5)
    assert reading.method == "RAPL package-0"


def _set_counter(path: Path, value: int) -> None:
    """Change a fake counter at once, as sysfs does: write_text truncates first, and a poll
    that lands in between reads an empty file (a failed read: no figure at all)."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(f"{value}\n")
    os.replace(staged, path)


def test_rapl_polling_counts_more_than_one_wrap(tmp_path: Path) -> None:
    # a fake counter, so the wrap logic is tested on every machine, RAPL readable or not
    package = _zone(tmp_path, "package-0", "intel-rapl:0", 900, 1000)
    with EnergyMeter(gpu_indices=(), powercap_root=tmp_path, poll_s=0.005) as meter:
        for value in (100, 900, 100):  # +200, +800, +200 µJ: 1.2 ranges in all
            _set_counter(package, value)
            # each value must be polled before the next (a missed wrap is lost): wait for the
            # poller as long as a loaded machine needs, and fail with why if it never comes
            deadline = time.monotonic() + 60
            while meter._rapl_last[0] != value and time.monotonic() < deadline:
                time.sleep(0.002)
            assert meter._rapl_last[0] == value, f"the poller never read {value} in 60 s"
    assert meter.joules == pytest.approx(1200e-6), meter.method
    assert meter.method == "RAPL package-0"


def test_rapl_polling_on_this_machine_counts_up() -> None:
    zones, why = rapl_zones(POWERCAP_ROOT)
    if not zones:
        pytest.skip(f"no RAPL counter readable here: {why}")
    with EnergyMeter(gpu_indices=(), poll_s=0.01) as meter:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # a package draws power while it works
            sum(i * i for i in range(10_000))
    assert meter.joules is not None and meter.joules > 0, meter.method
    assert meter.method == "RAPL " + "+".join(zone.name for zone in zones)


def test_unreadable_rapl_says_so(tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("1000\n")  # energy_uj missing
    with EnergyMeter(gpu_indices=(), powercap_root=tmp_path) as meter:
        pass
    assert meter.joules is None
    assert meter.method.startswith("not measured: no RAPL counter readable (intel-rapl:0: ")
