"""The one place crossinfer opens NVML (pynvml, from the nvidia-ml-py package).

`open_nvml()` imports pynvml and initialises it, or says in one line why it cannot: the bindings
are missing, there is no NVIDIA driver, the kernel driver is not loaded. NVML is initialised
once however many users hold it open at a time (doctor, the bench meters, serve's metrics, the
IREE backend's CUDA target), and shut down when the last one closes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from types import ModuleType, TracebackType


class Nvml:
    """NVML opened for one user, or why not: `lib` is the pynvml module, None with a `reason`.

    Close it once when done (or use it as a context manager); closing an unavailable one is a
    no-op.
    """

    def __init__(self, *, lib: ModuleType | None, reason: str = "") -> None:
        self.lib = lib
        self.reason = reason

    @property
    def available(self) -> bool:
        return self.lib is not None

    def close(self) -> None:
        lib, self.lib = self.lib, None
        if lib is not None:
            _release(lib)

    def __enter__(self) -> Nvml:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_lock = threading.Lock()
# id(pynvml module) -> (the module, how many users hold it open); keyed by the module so a test's
# stand-in in sys.modules is counted apart from the real bindings
_open: dict[int, tuple[ModuleType, int]] = {}


def open_nvml() -> Nvml:
    """Import pynvml and initialise NVML (once per process while held open), or say why not."""
    from crossinfer.hardware.discover import describe_error  # discover imports this module

    try:
        import pynvml as lib
    except ImportError as exc:
        return Nvml(
            lib=None, reason=f"NVML bindings not importable (nvidia-ml-py): {describe_error(exc)}"
        )
    with _lock:
        held = _open.get(id(lib))
        if held is not None:
            _open[id(lib)] = (lib, held[1] + 1)
            return Nvml(lib=lib)
        try:
            lib.nvmlInit()
        except Exception as exc:
            return Nvml(lib=None, reason=init_failure_reason(lib, exc))
        _open[id(lib)] = (lib, 1)
    return Nvml(lib=lib)


def _release(lib: ModuleType) -> None:
    with _lock:
        held = _open.get(id(lib))
        if held is None:
            return
        if held[1] > 1:
            _open[id(lib)] = (lib, held[1] - 1)
            return
        del _open[id(lib)]
    # Shutdown failing cannot change what was already read.
    with contextlib.suppress(Exception):
        lib.nvmlShutdown()


def library_name() -> str:
    return "nvml.dll" if sys.platform == "win32" else "libnvidia-ml.so.1"


def init_failure_reason(lib: ModuleType, exc: Exception) -> str:
    """Why nvmlInit failed, in words: the usual causes by NVML's error code."""
    from crossinfer.hardware.discover import describe_error

    code = getattr(exc, "value", None)
    if code is not None and code == getattr(lib, "NVML_ERROR_LIBRARY_NOT_FOUND", 12):
        return f"NVML not available: no NVIDIA driver ({library_name()} not found)"
    if code is not None and code == getattr(lib, "NVML_ERROR_DRIVER_NOT_LOADED", 9):
        return "NVML not available: the NVIDIA kernel driver is not loaded"
    if code is not None and code == getattr(lib, "NVML_ERROR_NO_PERMISSION", 4):
        return "NVML not available: no permission to open the NVIDIA device files"
    return f"NVML init failed: {describe_error(exc)}"
