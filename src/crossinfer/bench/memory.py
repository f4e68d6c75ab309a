"""Peak memory of a benchmark run: process RSS sampled in a background thread, GPU memory via NVML.

`PeakMemory` is a context manager; a figure it cannot measure is None with the reason beside it.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import psutil

from crossinfer.hardware.nvml import Nvml, open_nvml

__all__ = ["PeakMemory"]

_MB = 1024 * 1024


class PeakMemory:
    """Highest RSS of this process (and GPU memory, when NVML sees a GPU) inside a ``with`` block.

    Samples every `interval_s`, plus once on entry and once on exit. On Linux the kernel's own
    high-water mark (ru_maxrss) is also read: when it rose inside the block, it catches a spike
    shorter than the sampling interval.
    """

    def __init__(
        self,
        *,
        interval_s: float = 0.005,
        gpu: bool = True,
        gpu_indices: Sequence[int] | None = None,  # None: every GPU NVML lists
    ) -> None:
        self.interval_s = interval_s
        self._want_gpu = gpu
        self._gpu_indices = None if gpu_indices is None else tuple(gpu_indices)
        self._process = psutil.Process(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._maxrss_start = 0
        self._nvml: Nvml | None = None
        self._handles: list[Any] = []
        self._gpu_label = ""
        self._peak_mine_mb: float | None = None
        self._peak_device_mb: float | None = None
        self.baseline_rss_mb = 0.0
        self.peak_rss_mb = 0.0
        self.samples = 0
        self.peak_device_mem_mb: float | None = None
        self.device_mem_method = ""  # what peak_device_mem_mb counts
        self.device_mem_reason = ""  # why peak_device_mem_mb is None
        self.sampler_error: str | None = None

    def __enter__(self) -> PeakMemory:
        self._maxrss_start = _maxrss_bytes()
        rss = self._process.memory_info().rss
        self.baseline_rss_mb = rss / _MB
        self.peak_rss_mb = self.baseline_rss_mb
        if self._want_gpu:
            self._open_nvml()
        else:
            self.device_mem_reason = "not measured: GPU memory not asked for"
        self._sample()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="crossinfer-peak-memory", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        maxrss = _maxrss_bytes()
        if maxrss > self._maxrss_start:
            self.peak_rss_mb = max(self.peak_rss_mb, maxrss / _MB)
        self._close_nvml()

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_rss_mb": self.baseline_rss_mb,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_device_mem_mb": self.peak_device_mem_mb,
            "device_mem_method": self.device_mem_method,
            "device_mem_reason": self.device_mem_reason,
            "samples": self.samples,
        }

    # internals

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            rss_mb = self._process.memory_info().rss / _MB
            mine, device = self._device_used_mb() if self._nvml is not None else (None, None)
        except Exception as exc:
            # Recorded, not raised: the run goes on and the report says the sampler failed.
            self.sampler_error = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self.samples += 1
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb)
            if mine is not None:
                self._peak_mine_mb = max(self._peak_mine_mb or 0.0, mine)
            if device is not None:
                self._peak_device_mb = max(self._peak_device_mb or 0.0, device)

    def _open_nvml(self) -> None:
        nvml = open_nvml()
        if nvml.lib is None:
            self.device_mem_reason = f"not measured: {nvml.reason}"
            return
        lib = nvml.lib
        try:
            count = int(lib.nvmlDeviceGetCount())
            indices = self._gpu_indices if self._gpu_indices is not None else range(count)
            self._handles = [lib.nvmlDeviceGetHandleByIndex(i) for i in indices]
        except Exception as exc:
            self.device_mem_reason = f"not measured: NVML query failed ({_nvml_text(exc)})"
            nvml.close()
            return
        if not self._handles:
            self.device_mem_reason = "not measured: NVML lists no GPU"
            nvml.close()
            return
        self._nvml = nvml
        self._gpu_label = "GPU " + ",".join(str(i) for i in indices)

    def _device_used_mb(self) -> tuple[float | None, float]:
        """This process's GPU memory (None when NVML does not list it) and the devices' used."""
        assert self._nvml is not None and self._nvml.lib is not None
        nvml = self._nvml.lib
        pid = os.getpid()
        mine: int | None = None
        for handle in self._handles:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = getattr(proc, "usedGpuMemory", None)
                # usedGpuMemory is None where NVML may not tell (no permission, MIG)
                if int(proc.pid) == pid and used is not None:
                    mine = (mine or 0) + int(used)
        device = sum(int(nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self._handles)
        return (None if mine is None else mine / _MB), device / _MB

    def _close_nvml(self) -> None:
        if self._nvml is None:
            return
        self._nvml.close()
        self._nvml = None
        if self._peak_mine_mb is not None:
            self.peak_device_mem_mb = self._peak_mine_mb
            self.device_mem_method = f"NVML memory used by this process ({self._gpu_label})"
        elif self._peak_device_mb is not None:
            # In a container NVML lists host pids, so ours never shows: the devices' whole used
            # memory is the figure left, and the method says that it counts every process.
            self.peak_device_mem_mb = self._peak_device_mb
            self.device_mem_method = (
                f"NVML device memory used by all processes ({self._gpu_label}; "
                "this pid not listed by NVML)"
            )
        else:
            self.device_mem_reason = f"not measured: NVML gave no reading ({self.sampler_error})"


def _maxrss_bytes() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is kilobytes on Linux, bytes on macOS.
    return int(usage) if sys.platform == "darwin" else int(usage) * 1024


def _nvml_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
