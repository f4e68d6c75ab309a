"""The one NVML opener: initialised once while held, shut down by the last user, or why not."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from crossinfer.hardware.nvml import open_nvml


class _FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def _fake_pynvml(init_error: int | None = None) -> Any:
    nvml: Any = types.ModuleType("pynvml")
    nvml.NVML_ERROR_LIBRARY_NOT_FOUND = 12
    nvml.calls = []

    def init() -> None:
        nvml.calls.append("init")
        if init_error is not None:
            raise _FakeNVMLError(init_error)

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: nvml.calls.append("shutdown")
    return nvml


def test_held_twice_it_is_initialised_once_and_shut_down_by_the_last_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    first = open_nvml()
    with open_nvml() as second:
        assert first.lib is fake and second.lib is fake and second.reason == ""
        assert fake.calls == ["init"]
    assert fake.calls == ["init"]  # the first user still holds it
    first.close()
    first.close()  # a second close is a no-op, not a second shutdown
    assert fake.calls == ["init", "shutdown"]
    assert not first.available
    with open_nvml():
        pass
    assert fake.calls == ["init", "shutdown", "init", "shutdown"]


def test_no_driver_is_a_reason_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    fake = _fake_pynvml(init_error=12)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with open_nvml() as nvml:
        assert nvml.lib is None and not nvml.available
        assert nvml.reason == "NVML not available: no NVIDIA driver (libnvidia-ml.so.1 not found)"
    assert fake.calls == ["init"]  # nothing to shut down
    # a failed init is not cached: the next user tries again
    with open_nvml():
        pass
    assert fake.calls == ["init", "init"]


def test_missing_bindings_say_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # None makes the import raise ImportError
    nvml = open_nvml()
    assert nvml.lib is None
    assert nvml.reason == (
        "NVML bindings not importable (nvidia-ml-py): "
        "ModuleNotFoundError: import of pynvml halted; None in sys.modules"
    )
