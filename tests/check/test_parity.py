"""Parity arithmetic on constructed arrays: errors, cosine, the smallest passing atol, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossinfer.backends.base import Precision
from crossinfer.check.parity import Tolerance, compare_outputs, default_tolerance

TOL = Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999)


def test_identical_outputs_pass_with_zero_error() -> None:
    x = np.linspace(-1, 1, 11, dtype=np.float32)
    (c,) = compare_outputs({"y": x.copy()}, {"y": x}, TOL)
    assert (
        c.passed and c.max_abs_error == 0 and c.cosine == pytest.approx(1.0) and c.needed_atol == 0
    )


def test_error_figures_and_needed_atol() -> None:
    expected = np.array([1.0, 2.0, -4.0, 0.0], np.float32)
    actual = expected + np.array([0.0, 0.01, 0.0, 0.002], np.float32)
    (c,) = compare_outputs({"y": actual}, {"y": expected}, TOL)
    assert not c.passed
    assert c.max_abs_error == pytest.approx(0.01, rel=1e-4)
    # the 0.01 error on 2.0 needs atol 0.01 - 1e-3*2 = 0.008; the 0.002 on 0.0 needs 0.002
    assert c.needed_atol == pytest.approx(0.008, rel=1e-3)
    assert c.mismatched == 2 and c.total == 4
    assert "2 of 4 values beyond" in c.reason
    # with the reported atol it passes
    (again,) = compare_outputs({"y": actual}, {"y": expected}, Tolerance(0.00801, 1e-3, 0.99))
    assert again.passed


def test_relative_error_does_not_explode_on_zero_reference() -> None:
    expected = np.array([0.0, 1000.0], np.float32)
    actual = np.array([1e-3, 1000.0], np.float32)
    (c,) = compare_outputs({"y": actual}, {"y": expected}, TOL)
    # denominator floor is 1e-6 * max|ref| = 1e-3, so the relative error is 1, not infinity
    assert c.max_rel_error == pytest.approx(1.0)


def test_cosine_floor_fails_a_sign_flip_within_atol() -> None:
    expected = np.full(100, 1e-5, np.float32)
    actual = -expected
    (c,) = compare_outputs({"y": actual}, {"y": expected}, TOL)
    assert c.mismatched == 0  # every element is within atol=1e-4
    assert not c.passed and c.cosine == pytest.approx(-1.0) and "cosine similarity" in c.reason


def test_shape_mismatch_and_missing_output() -> None:
    results = compare_outputs(
        {"a": np.zeros((2, 3), np.float32)},
        {"a": np.zeros((3, 2), np.float32), "b": np.zeros(1, np.float32)},
        TOL,
    )
    by_name = {c.name: c for c in results}
    assert "has shape [2, 3], reference [3, 2]" in by_name["a"].reason
    assert by_name["b"].reason == "output 'b' is missing"
    assert not any(c.passed for c in results)


def test_nan_where_reference_is_finite_fails() -> None:
    (c,) = compare_outputs(
        {"y": np.array([1.0, np.nan], np.float32)}, {"y": np.array([1.0, 2.0], np.float32)}, TOL
    )
    assert not c.passed and "NaN in 1 places" in c.reason


def test_integer_outputs_must_match_exactly() -> None:
    (ok,) = compare_outputs({"i": np.array([1, 2, 3])}, {"i": np.array([1, 2, 3])}, TOL)
    (bad,) = compare_outputs({"i": np.array([1, 2, 4])}, {"i": np.array([1, 2, 3])}, TOL)
    assert ok.passed
    assert (
        not bad.passed
        and bad.reason == "1 of 3 int64 values differ"
        and math.isinf(bad.needed_atol)
    )


def test_tolerances_loosen_with_precision() -> None:
    order = [Precision.FP32, Precision.FP16, Precision.BF16, Precision.INT8]
    atols = [default_tolerance(p).atol for p in order]
    assert atols == sorted(atols) and atols[0] < atols[-1]
    # BF16 rounding (8 mantissa bits, kept by truncation) fails FP32 and passes BF16
    expected = np.linspace(-3, 3, 1000).astype(np.float32)
    actual = (expected.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    (fp32,) = compare_outputs({"y": actual}, {"y": expected}, default_tolerance(Precision.FP32))
    (bf16,) = compare_outputs({"y": actual}, {"y": expected}, default_tolerance(Precision.BF16))
    assert not fp32.passed and bf16.passed


def test_int8_atol_scales_with_the_tensor_range() -> None:
    tol = default_tolerance(Precision.INT8)
    assert tol.atol_scaled
    # an error of 0.4 is 2% of a range of 20: fine for INT8; on a range of 2 it is 20%: not fine
    big = np.linspace(-20, 20, 101).astype(np.float32)
    small = big / 10
    bump = np.zeros(101, np.float32)
    bump[50] = 0.4  # on the element whose reference is 0, where rtol gives nothing
    (wide,) = compare_outputs({"y": big + bump}, {"y": big}, tol)
    (narrow,) = compare_outputs({"y": small + bump}, {"y": small}, tol)
    assert wide.passed
    assert not narrow.passed and "(0.05·max|ref|)" in narrow.reason
