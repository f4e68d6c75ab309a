"""Backends for unit tests of crossinfer's own logic: one that works in numpy, some that misbehave.

They live in an importable module (not a test file) because `check` runs backends in spawned
child processes, which import them by module path.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from crossinfer.backends.base import (
    BackendEntry,
    Compatibility,
    DeviceInfo,
    Placement,
    Precision,
    SessionOptions,
    Target,
    validate_feeds,
)
from crossinfer.errors import UsageError
from crossinfer.model import ModelArtifact


class _Session:
    def __init__(self, artifact: ModelArtifact, name: str, scale: float = 1.0) -> None:
        from onnx.reference import ReferenceEvaluator

        self.target = Target(name, "cpu")
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self._eval = ReferenceEvaluator(artifact.load_proto())
        self._scale = scale

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = validate_feeds(self.inputs, feeds)
        values = self._eval.run(None, arrays)
        return {
            o.name: np.asarray(v) * self._scale for o, v in zip(self.outputs, values, strict=True)
        }

    def placement(self) -> Placement:
        return Placement(node_devices={"n": "cpu"}, primary="cpu")

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake"}

    def close(self) -> None:
        pass


class _Base:
    name = "fake"

    def version(self) -> str:
        return "0"

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo("cpu")]

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility:
        return Compatibility(True)


class DriftingBackend(_Base):
    """Runs the model correctly, then scales outputs by 1.01: a numerical mismatch."""

    name = "drifting"

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> _Session:
        return _Session(artifact, self.name, scale=1.01)


class SegfaultBackend(_Base):
    """Dereferences NULL while preparing: the whole process dies with SIGSEGV."""

    name = "segfault"

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> _Session:
        os.write(2, b"fake runtime: about to dereference NULL\n")
        ctypes.string_at(0)
        raise AssertionError("unreachable")


class HangingBackend(_Base):
    """Never returns from prepare: the check must time out and kill it."""

    name = "hanging"

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> _Session:
        time.sleep(3600)
        raise AssertionError("unreachable")


class ExitingBackend(_Base):
    """Calls os._exit(3) as some runtimes do on a fatal error."""

    name = "exiting"

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> _Session:
        os._exit(3)


def entry(cls: type[_Base]) -> BackendEntry:
    return BackendEntry(cls.name, __name__, cls.__name__, "this is a test backend")


# --- a toy backend declared the way a new runtime would be: one entry, nothing else ----------

TOY_DEVICES = ("cpu", "toy-accelerator")  # what the toy "runtime" (this module) offers


class ToyBackend(_Base):
    """Runs the model correctly on 'cpu'; registered through TOY_ENTRY only."""

    name = "toy"

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> _Session:
        return _Session(artifact, self.name)


def toy_probe(runtime: ModuleType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Doctor's view of the toy runtime: reads the module doctor imported."""
    return tuple(runtime.TOY_DEVICES), ("a toy runtime for tests",)


def toy_knob_grid(cores: int) -> tuple[Mapping[str, Any], ...]:
    return ({"threads": cores}, {"threads": 1, "instances": cores})


TOY_ENTRY = BackendEntry(
    "toy",
    __name__,
    "ToyBackend",
    "pip install toy-runtime",
    runtime_module=__name__,
    # the first is not installed: the version is the second's
    distributions=("crossinfer-no-such-toy-runtime", "numpy"),
    probe=toy_probe,
    knob_grid=toy_knob_grid,
    presets={"fp16": (("simplify", "fp16"), Precision.FP32)},
    serving_platform="toy_platform",
)


# --- a backend with modes, declared as torch's: an option grid, a compile recorded per shape --

MODAL_COMPILE_S = 7.0  # what a "compile" or "capture" session says its first call of a shape took


class _ModalSession(_Session):
    def __init__(self, artifact: ModelArtifact, device: str, mode: str) -> None:
        super().__init__(artifact, "modal")
        self.target = Target("modal", device)
        self.mode = mode
        self.compile_s: dict[str, float] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shape = " ".join("x".join(map(str, np.shape(v))) for v in feeds.values())
        # a figure declared, not slept: tests must not wait for it
        self.compile_s.setdefault(shape, 0.0 if self.mode == "eager" else MODAL_COMPILE_S)
        return super().run(feeds)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake", "mode": self.mode, "compile_s": dict(self.compile_s)}


class ModalBackend(_Base):
    """Runs the model correctly on 'cpu' and 'fakegpu', in mode eager, compile or capture (the
    last on fakegpu only), as SessionOptions.extra says; refuses other options as torch does."""

    name = "modal"

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo("cpu"), DeviceInfo("fakegpu")]

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> _Session:
        extra = dict((options or SessionOptions()).extra)
        mode = extra.pop("mode", "eager")
        if extra or mode not in ("eager", "compile", "capture"):
            raise UsageError(f"modal takes mode=eager|compile|capture, got {options}")
        if mode == "capture" and device != "fakegpu":
            raise UsageError("modal: capture needs fakegpu")
        return _ModalSession(artifact, device, mode)


def modal_option_grid(device: str, exhaustive: bool) -> tuple[Mapping[str, str], ...]:
    grid: list[Mapping[str, str]] = [{"mode": "eager"}, {"mode": "compile"}]
    if device == "fakegpu":
        grid.append({"mode": "capture"})
    return tuple(grid)


MODAL_ENTRY = BackendEntry(
    "modal",
    __name__,
    "ModalBackend",
    "pip install modal-runtime",
    option_grid=modal_option_grid,
    # a recipe with no pass, as torch's: optimize proves it on the target
    presets={"bf16": ((), Precision.BF16)},
)
