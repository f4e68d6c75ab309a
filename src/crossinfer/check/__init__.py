"""`check`: does a model load on each runtime x device, where do its nodes run, are its outputs right."""

from __future__ import annotations

from crossinfer.check.inputs import concrete_shape, load_inputs, random_inputs
from crossinfer.check.isolate import ChildOutcome, run_isolated
from crossinfer.check.parity import (
    DEFAULT_TOLERANCES,
    OutputComparison,
    Tolerance,
    compare_outputs,
    default_tolerance,
)
from crossinfer.check.runner import CheckReport, CheckRow, Verdict, check_model, default_targets

__all__ = [
    "DEFAULT_TOLERANCES",
    "CheckReport",
    "CheckRow",
    "ChildOutcome",
    "OutputComparison",
    "Tolerance",
    "Verdict",
    "check_model",
    "compare_outputs",
    "concrete_shape",
    "default_targets",
    "default_tolerance",
    "load_inputs",
    "random_inputs",
    "run_isolated",
]
