"""Errors crossing the child-process boundary are judged by the errors.py tree, not by a name."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import crossinfer
import crossinfer.errors as errors
from crossinfer.bench.runner import _reason
from crossinfer.check import Verdict
from crossinfer.check.isolate import ChildOutcome, run_isolated
from crossinfer.check.runner import _verdict_for
from crossinfer.errors import (
    BackendError,
    BackendUnavailableError,
    CompileError,
    CrossinferError,
    DeviceUnavailableError,
    InferenceError,
    QueueFullError,
    StoreError,
    error_class,
)

# modules that import a runtime at import time; none of them defines a crossinfer error
_RUNTIME_MODULES = ("crossinfer.backends.", "crossinfer.sources.", "crossinfer.passes.int8_nncf")


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_every_crossinfer_error_lives_in_the_errors_tree() -> None:
    for info in pkgutil.walk_packages(crossinfer.__path__, "crossinfer."):
        if not info.name.startswith(_RUNTIME_MODULES):
            importlib.import_module(info.name)
    ours = {c for c in _subclasses(CrossinferError) if c.__module__.startswith("crossinfer")}
    elsewhere = sorted(
        f"{c.__module__}.{c.__name__}" for c in ours if c.__module__ != errors.__name__
    )
    assert elsewhere == []
    assert set(errors.ERROR_CLASSES.values()) == ours | {CrossinferError}
    for cls in ours:  # the module docstring draws the tree: every class is on it
        assert f" {cls.__name__} " in errors.__doc__ or f" {cls.__name__}\n" in errors.__doc__


def test_error_class_maps_every_name_back_and_foreign_names_to_none() -> None:
    for name, cls in errors.ERROR_CLASSES.items():
        assert error_class(name) is cls and cls.__name__ == name
    assert error_class("ValueError") is None
    assert error_class("short_message") is None  # a function of errors.py is not an error


@pytest.mark.parametrize(
    ("cls", "verdict"),
    [
        (BackendUnavailableError, Verdict.UNAVAILABLE),
        (DeviceUnavailableError, Verdict.UNAVAILABLE),
        (CompileError, Verdict.UNSUPPORTED),
        (InferenceError, Verdict.ERROR),
        (BackendError, Verdict.ERROR),
        (QueueFullError, Verdict.ERROR),
        (None, Verdict.ERROR),
    ],
)
def test_verdicts_follow_the_tree(cls: type[CrossinferError] | None, verdict: Verdict) -> None:
    assert _verdict_for(cls) is verdict


def _raise_device_unavailable() -> None:
    raise DeviceUnavailableError("no GPU here")


def _raise_foreign() -> None:
    raise KeyError("boom")


def test_an_error_raised_in_a_child_comes_back_as_its_class() -> None:
    outcome = run_isolated(_raise_device_unavailable, timeout_s=60)
    assert outcome.status == "error" and outcome.error_class is DeviceUnavailableError
    assert _verdict_for(outcome.error_class) is Verdict.UNAVAILABLE
    foreign = run_isolated(_raise_foreign, timeout_s=60)
    assert foreign.status == "error" and foreign.error_type == "KeyError"
    assert foreign.error_class is None and _verdict_for(foreign.error_class) is Verdict.ERROR


def test_bench_names_the_type_of_foreign_errors_only() -> None:
    # StoreError lived in store.py and was named as if foreign; now every error of the tree is ours
    own = ChildOutcome("error", error_type=StoreError.__name__, message="results store x: locked")
    assert _reason(own) == "results store x: locked"
    foreign = ChildOutcome("error", error_type="KeyError", message="'x'")
    assert _reason(foreign) == "KeyError: 'x'"
    crashed = ChildOutcome("crashed", message="killed by SIGSEGV")
    assert _reason(crashed) == "crashed: killed by SIGSEGV"
    # a crash's last stderr lines travel with it (they name the assertion that aborted)
    tail = (
        "a\nb\nterminate called\n  what():  CUDA error: x\nException raised from f\nframe #0: g\n"
    )
    said = ChildOutcome("crashed", message="killed by SIGABRT", stderr_tail=tail)
    assert _reason(said) == (
        "crashed: killed by SIGABRT (last stderr: b; terminate called; what():  CUDA error: x)"
    )
