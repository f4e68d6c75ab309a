"""`crossinfer check`: run a model on every backend x device, each in a child process, and judge it.

Each row says whether the model loads, where its nodes run, and whether its outputs match the
reference backend's within the tolerance for the precision asked for.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from crossinfer.backends.base import (
    BackendEntry,
    Precision,
    SessionOptions,
    Target,
    backend_entries,
    backend_entry,
    load_backend,
)
from crossinfer.check.isolate import ChildOutcome, run_isolated
from crossinfer.check.parity import OutputComparison, Tolerance, compare_outputs, default_tolerance
from crossinfer.errors import (
    BackendUnavailableError,
    CompileError,
    CrossinferError,
    DeviceUnavailableError,
    InferenceError,
    error_class,
)
from crossinfer.model import ModelArtifact


class Verdict(enum.StrEnum):
    PASS = "pass"
    MISMATCH = "numerical mismatch"
    UNSUPPORTED = "unsupported"  # the runtime or device cannot run this model
    UNAVAILABLE = "unavailable"  # the runtime or device is not on this machine
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    ERROR = "error"  # the runtime raised while running
    NO_REFERENCE = "no reference"  # it ran, but there was nothing to compare with


@dataclass(frozen=True)
class CheckRow:
    target: str
    verdict: Verdict
    reason: str = ""
    is_reference: bool = False
    load_s: float | None = None  # session creation: parse, optimize, compile
    first_run_s: float | None = None
    run_s: float | None = None  # a second, warm run
    placement: dict[str, Any] | None = None
    comparisons: tuple[OutputComparison, ...] = ()
    session: dict[str, Any] = field(default_factory=dict)  # what actually ran
    unsupported_ops: tuple[str, ...] = ()
    stderr_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.PASS

    def worst(self) -> OutputComparison | None:
        measured = [c for c in self.comparisons if c.total]
        return max(measured, key=lambda c: c.max_abs_error, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "is_reference": self.is_reference,
            "load_s": self.load_s,
            "first_run_s": self.first_run_s,
            "run_s": self.run_s,
            "placement": self.placement,
            "outputs": [c.to_dict() for c in self.comparisons],
            "session": self.session,
            "unsupported_ops": list(self.unsupported_ops),
            "stderr_tail": self.stderr_tail,
        }


@dataclass(frozen=True)
class CheckReport:
    model: ModelArtifact
    reference: str
    precision: Precision
    tolerance: Tolerance
    inputs: dict[str, tuple[list[int], str]]  # name -> (shape, dtype) of what was fed
    input_source: str
    rows: tuple[CheckRow, ...]
    requested_reference: str = ""  # what --reference asked for; `reference` is what served

    @property
    def judged(self) -> bool:
        """Whether a reference served, so the other rows' verdicts mean something."""
        return bool(self.reference)

    def row(self, target: str) -> CheckRow:
        for row in self.rows:
            if row.target == target:
                return row
        raise KeyError(target)

    def failed(self, required: Sequence[str]) -> list[str]:
        """Required targets whose row did not pass (or is missing)."""
        bad = []
        for target in required:
            name = str(Target.parse(target))
            rows = [r for r in self.rows if r.target == name]
            if not rows or not rows[0].passed:
                bad.append(name)
        return bad

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {
                "source": self.model.source,
                "sha256": self.model.sha256,
                "path": str(self.model.path),
            },
            "reference": self.reference or None,
            "requested_reference": self.requested_reference,
            "precision": self.precision.value,
            "tolerance": self.tolerance.to_dict(),
            "inputs": {k: {"shape": s, "dtype": d} for k, (s, d) in self.inputs.items()},
            "input_source": self.input_source,
            "rows": [r.to_dict() for r in self.rows],
        }


def default_targets() -> tuple[list[Target], list[CheckRow]]:
    """Every available device of every installed backend, and rows for the runtimes missing."""
    targets: list[Target] = []
    missing: list[CheckRow] = []
    for entry in backend_entries():
        try:
            backend = load_backend(entry)
        except BackendUnavailableError as exc:
            missing.append(CheckRow(f"{entry.name}:*", Verdict.UNAVAILABLE, str(exc)))
            continue
        for device in backend.devices():
            # AUTO-style virtual devices repeat a real one; a check on the real one says more
            if device.available and device.name != "auto":
                targets.append(Target(entry.name, device.name))
    return targets, missing


# When the asked-for reference cannot run the model, the next of these that can is the truth:
# onnx's evaluator first (independent of every optimizing runtime), then ONNX Runtime's CPU
# provider (the most widely used kernels, FP32, no graph rewrites that change numerics).
TRUSTED_REFERENCES: tuple[str, ...] = ("reference:cpu", "onnxruntime:cpu")


def check_model(
    artifact: ModelArtifact,
    *,
    targets: Sequence[Target] | None = None,
    reference: str = "reference:cpu",
    feeds: Mapping[str, np.ndarray],
    input_source: str = "given",
    precision: Precision = Precision.FP32,
    tolerance: Tolerance | None = None,
    options: SessionOptions | None = None,
    timeout_s: float = 600.0,
    on_row: Callable[[CheckRow], None] | None = None,
) -> CheckReport:
    """Run the reference first (falling back along TRUSTED_REFERENCES), then every target."""
    tolerance = tolerance or default_tolerance(precision)
    options = replace(options or SessionOptions(), precision=precision)
    asked = Target.parse(reference)
    extra_rows: list[CheckRow] = []
    if targets is None:
        targets, extra_rows = default_targets()
    rows: list[CheckRow] = []

    def emit(row: CheckRow) -> None:
        rows.append(row)
        if on_row:
            on_row(row)

    # The reference runs at FP32 whatever precision the candidates are checked at.
    ref_options = replace(options, precision=Precision.FP32)
    chain = [asked] + [t for t in map(Target.parse, TRUSTED_REFERENCES) if t != asked]
    ref_target: Target | None = None
    ref_outputs: dict[str, np.ndarray] | None = None
    tried: list[Target] = []
    for i, candidate in enumerate(chain):
        row, outputs = _run_row(artifact, candidate, feeds, ref_options, timeout_s)
        tried.append(candidate)
        if outputs is not None:
            row = _judge_reference(row, artifact, outputs)
        if row.passed and outputs is not None:
            ref_target, ref_outputs = candidate, outputs
            if candidate != asked:
                row = replace(
                    row,
                    reason=f"{row.reason}; the reference instead of {asked}, which failed",
                )
            emit(replace(row, is_reference=True))
            break
        following = chain[i + 1] if i + 1 < len(chain) else None
        fallback = (
            f"; falling back to {following} as the reference"
            if following is not None
            else "; no trusted runtime is left to be the reference: the other rows are not "
            "judged (pass --reference BACKEND:DEVICE to name one)"
        )
        emit(
            replace(row, is_reference=False, reason=f"{row.reason or row.verdict.value}{fallback}")
        )

    for target in targets:
        # a target that ran as a reference at FP32 already has its row; at another precision
        # it is also a candidate, checked against the reference like any other
        if target in tried and (precision is Precision.FP32 or target != ref_target):
            continue
        row, outputs = _run_row(artifact, target, feeds, options, timeout_s)
        if outputs is not None:
            row = _judge(row, outputs, ref_outputs, tolerance, ref_target, tried)
            row = _name_precision_ran(row, precision)
            if row.verdict is Verdict.MISMATCH and (
                precision is Precision.INT8 or is_quantized(artifact)
            ):
                row = _name_isa_drift(row, target, artifact)
        emit(row)
    for row in extra_rows:
        emit(row)
    return CheckReport(
        model=artifact,
        reference=str(ref_target) if ref_target is not None else "",
        requested_reference=str(asked),
        precision=precision,
        tolerance=tolerance,
        inputs={k: (list(v.shape), v.dtype.name) for k, v in feeds.items()},
        input_source=input_source,
        rows=tuple(rows),
    )


def is_quantized(artifact: ModelArtifact) -> bool:
    """Whether the graph computes in 8-bit integers (QDQ pairs or integer ops)."""
    from crossinfer.passes.int8_static import QUANTIZED_OP_TYPES

    return any(op in QUANTIZED_OP_TYPES for op in artifact.op_histogram)


def _name_precision_ran(row: CheckRow, precision: Precision) -> CheckRow:
    """A row whose runtime silently ran another precision says which, from its read-back."""
    from crossinfer.ran_precision import precision_that_ran

    ran, why = precision_that_ran(precision, row.session)
    if ran is precision:
        return row
    note = f"ran {ran.value}, not {precision.value}: {why}"
    return replace(
        row,
        reason=f"{row.reason}; {note}" if row.reason else note,
        session={**row.session, "ran_precision": ran.value},
    )


def _name_isa_drift(row: CheckRow, target: Target, artifact: ModelArtifact) -> CheckRow:
    """An INT8 mismatch on a CPU without VNNI says which feature is missing and what to do."""
    from crossinfer.hardware.int8 import vnni_missing_note
    from crossinfer.passes.base import read_provenance

    note = vnni_missing_note(str(target), provenance=read_provenance(artifact.path))
    return row if note is None else replace(row, reason=f"{row.reason}; {note}")


def _run_row(
    artifact: ModelArtifact,
    target: Target,
    feeds: Mapping[str, np.ndarray],
    options: SessionOptions,
    timeout_s: float,
) -> tuple[CheckRow, dict[str, np.ndarray] | None]:
    name = str(target)
    try:
        entry = backend_entry(target.backend)
    except CrossinferError as exc:
        return CheckRow(name, Verdict.UNAVAILABLE, str(exc)), None
    light = replace(artifact, proto=None)  # the child reads the file itself
    outcome = run_isolated(
        run_target_in_child, entry, light, target.device, options, dict(feeds), timeout_s=timeout_s
    )
    return _row_from_outcome(name, outcome)


def _row_from_outcome(
    name: str, outcome: ChildOutcome
) -> tuple[CheckRow, dict[str, np.ndarray] | None]:
    if outcome.status == "timeout":
        return CheckRow(
            name, Verdict.TIMEOUT, outcome.message, stderr_tail=outcome.stderr_tail
        ), None
    if outcome.status == "crashed":
        return CheckRow(
            name, Verdict.CRASHED, outcome.message, stderr_tail=outcome.stderr_tail
        ), None
    if outcome.status == "error":
        verdict = _verdict_for(outcome.error_class)
        return (
            CheckRow(
                name,
                verdict,
                outcome.message or outcome.error_type,
                stderr_tail=outcome.stderr_tail,
            ),
            None,
        )
    result: ChildResult = outcome.value
    if result.error is not None:
        error_type, message = result.error
        verdict = _verdict_for(error_class(error_type))
        return (
            CheckRow(
                name,
                verdict,
                message,
                load_s=result.load_s,
                placement=result.placement,
                session=result.session,
                unsupported_ops=result.unsupported_ops,
            ),
            None,
        )
    row = CheckRow(
        name,
        Verdict.NO_REFERENCE,
        load_s=result.load_s,
        first_run_s=result.first_run_s,
        run_s=result.run_s,
        placement=result.placement,
        session=result.session,
        unsupported_ops=result.unsupported_ops,
    )
    return row, result.outputs


# keyed by class, not name: a renamed class is renamed here too (or fails at import), and a
# subclass gets its parent's verdict
_ERROR_VERDICTS: dict[type[CrossinferError], Verdict] = {
    BackendUnavailableError: Verdict.UNAVAILABLE,
    DeviceUnavailableError: Verdict.UNAVAILABLE,
    CompileError: Verdict.UNSUPPORTED,
    InferenceError: Verdict.ERROR,
}


def _verdict_for(error: type[CrossinferError] | None) -> Verdict:
    """The verdict for an error a child reported (its class from `error_class`); ERROR otherwise."""
    for cls in error.__mro__ if error is not None else ():
        if cls in _ERROR_VERDICTS:
            return _ERROR_VERDICTS[cls]
    return Verdict.ERROR


def _judge_reference(
    row: CheckRow, artifact: ModelArtifact, outputs: dict[str, np.ndarray]
) -> CheckRow:
    """The reference is not compared with itself: it must produce every declared output, finite."""
    problems = []
    comparisons = []
    for spec in artifact.outputs:
        value = outputs.get(spec.name)
        if value is None:
            problems.append(f"output '{spec.name}' missing")
            continue
        if spec.shape is not None and len(spec.shape) != value.ndim:
            problems.append(
                f"output '{spec.name}' has rank {value.ndim}, the model declares {len(spec.shape)}"
            )
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            problems.append(
                f"output '{spec.name}' has {int(np.count_nonzero(~np.isfinite(value)))} non-finite values"
            )
        comparisons.append(
            OutputComparison(
                spec.name, True, "", tuple(value.shape), 0.0, 0.0, 1.0, 0, int(value.size), 0.0
            )
        )
    if problems:
        return replace(row, verdict=Verdict.ERROR, reason="; ".join(problems))
    return replace(
        row,
        verdict=Verdict.PASS,
        reason="reference: every declared output produced, all finite",
        comparisons=tuple(comparisons),
    )


def _judge(
    row: CheckRow,
    outputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray] | None,
    tolerance: Tolerance,
    ref_target: Target | None,
    tried: Sequence[Target],
) -> CheckRow:
    if reference is None or ref_target is None:
        return replace(
            row,
            verdict=Verdict.NO_REFERENCE,
            reason=f"not judged: {' nor '.join(map(str, tried))} produced reference outputs",
        )
    comparisons = tuple(compare_outputs(outputs, reference, tolerance))
    failed = [c for c in comparisons if not c.passed]
    if failed:
        return replace(
            row,
            verdict=Verdict.MISMATCH,
            reason="; ".join(f"{c.name}: {c.reason}" for c in failed),
            comparisons=comparisons,
        )
    fallback = (row.placement or {}).get("fallback_count", 0)
    reason = f"matches {ref_target}"
    if fallback:
        reason += f"; {fallback} node(s) fell back from {row.placement['primary']}"  # type: ignore[index]
    return replace(row, verdict=Verdict.PASS, reason=reason, comparisons=comparisons)


@dataclass(frozen=True)
class ChildResult:
    load_s: float | None = None
    first_run_s: float | None = None
    run_s: float | None = None
    outputs: dict[str, np.ndarray] | None = None
    placement: dict[str, Any] | None = None
    session: dict[str, Any] = field(default_factory=dict)
    unsupported_ops: tuple[str, ...] = ()
    error: tuple[str, str] | None = None  # (exception class, message) after a partial success


def run_target_in_child(
    entry: BackendEntry,
    artifact: ModelArtifact,
    device: str,
    options: SessionOptions,
    feeds: dict[str, np.ndarray],
) -> ChildResult:
    """Runs in the child process: prepare, query placement, run twice. Module-level for pickling."""
    from crossinfer.errors import CompileError

    backend = load_backend(entry)
    compat = backend.supports(artifact, device)
    if not compat.supported:
        return ChildResult(
            unsupported_ops=compat.unsupported_ops, error=("CompileError", compat.reason)
        )
    start = time.perf_counter()
    try:
        session = backend.prepare(artifact, device, options)
    except CompileError as exc:
        return ChildResult(unsupported_ops=exc.unsupported_ops, error=("CompileError", str(exc)))
    load_s = time.perf_counter() - start
    placement = session.placement()
    placement_dict = placement.to_dict() if placement is not None else None
    info = session.describe()
    try:
        start = time.perf_counter()
        outputs = session.run(feeds)
        first = time.perf_counter() - start
        start = time.perf_counter()
        session.run(feeds)
        warm = time.perf_counter() - start
    except CrossinferError as exc:
        return ChildResult(
            load_s=load_s,
            placement=placement_dict,
            session=info,
            error=(type(exc).__name__, str(exc)),
        )
    finally:
        session.close()
    return ChildResult(
        load_s=load_s,
        first_run_s=first,
        run_s=warm,
        outputs=outputs,
        placement=placement_dict,
        session=info,
        unsupported_ops=placement.unsupported_ops if placement else (),
    )
