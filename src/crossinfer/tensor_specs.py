"""What a tensor's shape says against a TensorSpec: whether it fits, whether dim 0 is a batch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from crossinfer.model import Dim, TensorSpec

__all__ = ["batchable", "dtype_fits", "has_batch_dim", "shape_fits"]


def shape_fits(expected: Sequence[Dim] | None, actual: Sequence[int]) -> bool:
    """Same rank, and every fixed dim equal; symbolic or unknown dims take any size.

    `expected` None (rank unknown) takes any shape.
    """
    if expected is None:
        return True
    if len(expected) != len(actual):
        return False
    return all(not isinstance(e, int) or e == a for e, a in zip(expected, actual, strict=True))


def dtype_fits(spec: TensorSpec, dtype: np.dtype[Any]) -> bool:
    """Whether an array of `dtype` can feed `spec` as it is (no conversion).

    A BF16 input takes any dtype: numpy has no bfloat16 of its own, so the backend converts.
    """
    return spec.dtype == "bfloat16" or dtype == spec.numpy_dtype


def has_batch_dim(spec: TensorSpec) -> bool:
    """Whether dim 0 is variable (symbolic or unknown), so samples can be stacked along it."""
    return spec.shape is not None and len(spec.shape) > 0 and not isinstance(spec.shape[0], int)


def batchable(specs: Iterable[TensorSpec]) -> bool:
    """Whether every tensor has a batch dim (an empty list is batchable)."""
    return all(has_batch_dim(spec) for spec in specs)
