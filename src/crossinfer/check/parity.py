"""Output parity: compare a runtime's outputs with the reference, with precision-aware tolerances.

A tensor passes when every element meets |actual - expected| <= atol + rtol * |expected| (numpy's
allclose rule) and the cosine similarity of the flattened tensors reaches the floor. For INT8 the
atol is a fraction of the reference tensor's largest magnitude (`atol_scaled`): quantization
error follows each tensor's quantization step, its range / 255, not a fixed number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from crossinfer.backends.base import Precision


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_cosine: float
    atol_scaled: bool = False  # atol is a fraction of max|reference| (per output tensor)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# FP32 runtimes differ from the numpy reference only by summation order and fused kernels;
# half precisions keep 8-11 mantissa bits, INT8 is a different model altogether.
DEFAULT_TOLERANCES: dict[Precision, Tolerance] = {
    Precision.FP32: Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999),
    Precision.TF32: Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.9999),
    Precision.FP16: Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999),
    Precision.BF16: Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.995),
    Precision.INT8: Tolerance(atol=5e-2, rtol=1e-1, min_cosine=0.99, atol_scaled=True),
}


def default_tolerance(precision: Precision) -> Tolerance:
    return DEFAULT_TOLERANCES[precision]


@dataclass(frozen=True)
class OutputComparison:
    """How one output tensor compares with the reference."""

    name: str
    passed: bool
    reason: str  # empty when passed
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float  # |a-e| / max(|e|, 1e-6 * max|e|): near-zero references do not explode it
    cosine: float
    mismatched: int  # elements outside atol + rtol*|expected|
    total: int
    needed_atol: float  # the smallest atol that passes at this tolerance's rtol

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_outputs(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], tolerance: Tolerance
) -> list[OutputComparison]:
    """One comparison per reference output; a missing or extra output fails."""
    results = [_compare(name, actual.get(name), exp, tolerance) for name, exp in expected.items()]
    for name in actual:
        if name not in expected:
            results.append(_failed(name, f"output '{name}' is not produced by the reference"))
    return results


def _compare(
    name: str, actual: np.ndarray | None, expected: np.ndarray, tol: Tolerance
) -> OutputComparison:
    if actual is None:
        return _failed(name, f"output '{name}' is missing")
    if actual.shape != expected.shape:
        return _failed(
            name,
            f"output '{name}' has shape {list(actual.shape)}, reference {list(expected.shape)}",
        )
    total = int(expected.size)
    if expected.dtype.kind in "biu" or expected.dtype.kind == "U" or expected.dtype.kind == "O":
        equal = actual == expected
        mismatched = int(total - np.count_nonzero(equal))
        passed = mismatched == 0
        return OutputComparison(
            name=name,
            passed=passed,
            reason="" if passed else f"{mismatched} of {total} {expected.dtype} values differ",
            shape=tuple(expected.shape),
            max_abs_error=0.0 if passed else float("nan"),
            max_rel_error=0.0 if passed else float("nan"),
            cosine=1.0 if passed else float("nan"),
            mismatched=mismatched,
            total=total,
            needed_atol=0.0 if passed else float("inf"),
        )

    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if not np.array_equal(nan_a, nan_e):
        count = int(np.count_nonzero(nan_a != nan_e))
        return _failed(
            name,
            f"output '{name}': NaN in {count} places where the reference differs",
            shape=expected.shape,
        )
    finite = ~nan_e
    a, e = a[finite], e[finite]
    if a.size == 0:
        return _ok_empty(name, expected.shape, total)
    diff = np.abs(a - e)
    scale = float(np.max(np.abs(e)))
    rel = diff / np.maximum(np.abs(e), max(scale * 1e-6, np.finfo(np.float64).tiny))
    atol = tol.atol * scale if tol.atol_scaled else tol.atol
    limit = atol + tol.rtol * np.abs(e)
    mismatched = int(np.count_nonzero(diff > limit))
    cosine = _cosine(a, e)
    needed = float(np.max(np.maximum(diff - tol.rtol * np.abs(e), 0.0)))
    reasons = []
    if mismatched:
        reasons.append(
            f"{mismatched} of {total} values beyond atol={atol:.3g}"
            f"{f' ({tol.atol:g}·max|ref|)' if tol.atol_scaled else ''}+rtol={tol.rtol:g}·|ref| "
            f"(max abs error {float(diff.max()):.3g}; atol {needed:.3g} would pass)"
        )
    if cosine < tol.min_cosine:
        reasons.append(f"cosine similarity {cosine:.6f} < {tol.min_cosine}")
    return OutputComparison(
        name=name,
        passed=not reasons,
        reason="; ".join(reasons),
        shape=tuple(expected.shape),
        max_abs_error=float(diff.max()),
        max_rel_error=float(rel.max()),
        cosine=cosine,
        mismatched=mismatched,
        total=total,
        needed_atol=needed,
    )


def _cosine(a: np.ndarray, e: np.ndarray) -> float:
    na, ne = float(np.linalg.norm(a)), float(np.linalg.norm(e))
    if na == 0.0 and ne == 0.0:
        return 1.0
    if na == 0.0 or ne == 0.0:
        return 0.0
    return float(np.dot(a.ravel(), e.ravel()) / (na * ne))


def _failed(name: str, reason: str, shape: tuple[int, ...] = ()) -> OutputComparison:
    nan = float("nan")
    return OutputComparison(name, False, reason, tuple(shape), nan, nan, nan, 0, 0, float("inf"))


def _ok_empty(name: str, shape: tuple[int, ...], total: int) -> OutputComparison:
    return OutputComparison(name, True, "", tuple(shape), 0.0, 0.0, 1.0, 0, total, 0.0)
