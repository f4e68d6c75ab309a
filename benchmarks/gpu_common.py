"""Timing helpers the GPU benchmark scripts share (imported as a sibling script)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def timed_ms(step: Callable[[], object], iters: int) -> float:
    """Milliseconds per call, the device synchronised around the loop."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def top_kernels(step: Callable[[], object], top: int, calls: int = 3) -> list[dict[str, Any]]:
    """The CUDA kernels that take the most device time over `calls` calls, per call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        cuda_us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if cuda_us:
            rows.append(
                {"name": event.key[:90], "calls": event.count // calls, "ms": cuda_us / calls / 1e3}
            )
    rows.sort(key=lambda r: -r["ms"])
    return rows[:top]
