"""ONNX's own backend node tests run through a crossinfer backend: one verdict per case.

The cases are onnx's (``onnx.backend.test.case.node``: the generators that write the wheel-less
``onnx/backend/test/data/node``), built in memory; inputs and expected outputs are theirs, and
so are the tolerances. What crossinfer cannot feed (sequences, strings, training ops) is a
declared skip with its reason (`skip_reason`), counted, never dropped.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.errors import CompileError, CrossinferError, ModelError, short_message

__all__ = [
    "CaseResult",
    "NodeCase",
    "Outcome",
    "node_cases",
    "run_case",
    "skip_reason",
]

_TRAINING_DOMAIN = "ai.onnx.preview.training"


@dataclass(frozen=True)
class NodeCase:
    """One ONNX node test: a one-node model (or its function expansion), inputs, expected outputs."""

    name: str
    model: onnx.ModelProto
    inputs: tuple[Any, ...]
    outputs: tuple[Any, ...]
    rtol: float
    atol: float


class Outcome(Enum):
    PASS = "pass"
    FAIL = "fail"  # ran, outputs differ from onnx's expected ones
    UNSUPPORTED = "unsupported"  # the backend or its converter refused the node (op named)
    ERROR = "error"  # the backend failed some other way (loading, running)
    CRASHED = "crashed"  # the process died or hung (benchmarks/onnx_node_conformance.py)
    SKIPPED = "skipped"  # a declared skip (skip_reason)


@dataclass(frozen=True)
class CaseResult:
    case: str
    backend: str
    outcome: Outcome
    detail: str = ""
    unsupported_ops: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "backend": self.backend,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "unsupported_ops": list(self.unsupported_ops),
        }


def node_cases(modules: Iterable[str] | None = None) -> list[NodeCase]:
    """onnx's node test cases: all of them (1,800+, about 10 s of numpy), or those the named
    generator modules define (``"hardswish"`` is ``onnx/backend/test/case/node/hardswish.py``)."""
    from onnx.backend.test.case import node as generators

    if modules is None:
        cases = generators.collect_testcases()
    else:
        before = len(generators._NodeTestCases)
        # each generator module records its cases when imported (onnx's exporter metaclass)
        for module in modules:
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
        cases = generators._NodeTestCases[before:]
    found = []
    for case in cases:
        if case.model is None or not case.data_sets:
            continue
        inputs, outputs = case.data_sets[0]
        found.append(
            NodeCase(
                case.name,
                case.model,
                tuple(_array(x) for x in inputs),
                tuple(_array(x) for x in outputs),
                case.rtol,
                case.atol,
            )
        )
    return found


def _array(value: Any) -> Any:
    # onnx's generators give 0-d inputs as numpy scalars (CumSum's axis) and some tensors as
    # TensorProtos (Cast's float8/bfloat16 cases): tensors all the same
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value) if isinstance(value, np.generic) else value


def skip_reason(case: NodeCase) -> str | None:
    """Why crossinfer does not run this case on any backend, or None."""
    graph = case.model.graph
    if any(n.domain == _TRAINING_DOMAIN for n in graph.node):
        return "training op (ai.onnx.preview.training): crossinfer runs inference"
    for value in (*graph.input, *graph.output):
        if not value.type.HasField("tensor_type"):
            return "sequence/optional/map value: crossinfer's sessions take and return tensors"
        if value.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            return "string tensor: crossinfer's sessions take and return numeric tensors"
    if any(not isinstance(x, np.ndarray) for x in (*case.inputs, *case.outputs)):
        return "sequence/optional value: crossinfer's sessions take and return tensors"
    return None


def run_case(backend_name: str, case: NodeCase, workdir: Path | None = None) -> CaseResult:
    """Run `case` on `backend_name`'s CPU device at FP32 and compare with onnx's outputs."""
    reason = skip_reason(case)
    if reason is not None:
        return CaseResult(case.name, backend_name, Outcome.SKIPPED, reason)
    from crossinfer.model import load_model

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / f"{case.name}.onnx"
        onnx.save(case.model, path)
        try:
            artifact = load_model(path)
        except ModelError as exc:
            return CaseResult(case.name, backend_name, Outcome.ERROR, f"crossinfer's loader: {exc}")
        backend = get_backend(backend_name)
        compat = backend.supports(artifact, "cpu")
        if not compat.supported:
            return CaseResult(
                case.name,
                backend_name,
                Outcome.UNSUPPORTED,
                compat.reason or "",
                tuple(compat.unsupported_ops),
            )
        names = [i.name for i in artifact.inputs]
        feeds = dict(zip(names, case.inputs, strict=False))
        try:
            session = backend.prepare(artifact, "cpu", SessionOptions(precision=Precision.FP32))
        except CompileError as exc:
            return CaseResult(
                case.name,
                backend_name,
                Outcome.UNSUPPORTED,
                short_message(exc),
                tuple(exc.unsupported_ops),
            )
        except Exception as exc:  # a runtime's own error at load: recorded, the run goes on
            return CaseResult(case.name, backend_name, Outcome.ERROR, _what(exc))
        try:
            produced = session.run(feeds)
        except CompileError as exc:  # backends that compile per input shape (jax) do it here
            return CaseResult(
                case.name,
                backend_name,
                Outcome.UNSUPPORTED,
                short_message(exc),
                tuple(exc.unsupported_ops),
            )
        except Exception as exc:
            return CaseResult(case.name, backend_name, Outcome.ERROR, _what(exc))
        finally:
            session.close()
    mismatch = compare(case, [o.name for o in artifact.outputs], produced)
    if mismatch:
        return CaseResult(case.name, backend_name, Outcome.FAIL, mismatch)
    return CaseResult(case.name, backend_name, Outcome.PASS)


def compare(case: NodeCase, names: Sequence[str], produced: dict[str, np.ndarray]) -> str:
    """'' when every output matches onnx's within the case's tolerances, else what differs."""
    for name, want in zip(names, case.outputs, strict=False):
        got = produced.get(name)
        if got is None:
            return f"output '{name}' missing"
        got = np.asarray(got)
        if got.shape != want.shape:
            return f"output '{name}': shape {list(got.shape)}, expected {list(want.shape)}"
        if got.dtype != want.dtype:
            return f"output '{name}': dtype {got.dtype}, expected {want.dtype}"
        if want.dtype.kind in "fc":
            wide = want.astype(np.float64) if want.dtype.itemsize < 8 else want
            close = np.isclose(
                got.astype(wide.dtype), wide, rtol=case.rtol, atol=case.atol, equal_nan=True
            )
            if not close.all():
                worst = float(np.nanmax(np.abs(got.astype(np.float64) - wide.astype(np.float64))))
                return f"output '{name}': {int((~close).sum())} of {close.size} values differ (max abs {worst:.3g})"
        elif not np.array_equal(got, want):
            return f"output '{name}': {int((got != want).sum())} of {want.size} values differ"
    return ""


def _what(exc: BaseException) -> str:
    name = type(exc).__name__
    return (
        short_message(exc) if isinstance(exc, CrossinferError) else f"{name}: {short_message(exc)}"
    )
