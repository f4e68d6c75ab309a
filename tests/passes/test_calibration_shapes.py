"""A calibration array stacks samples on its first axis; a fixed batch dim of 1 takes any count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from crossinfer.errors import InputError
from crossinfer.model import TensorSpec
from crossinfer.passes.calibration import _check_array


def _spec(shape: tuple[int | str | None, ...] | None) -> TensorSpec:
    return TensorSpec("x", "float32", shape, TensorProto.FLOAT)


@pytest.mark.parametrize(
    ("shape", "array_shape"),
    [(("batch", 4), (5, 4)), ((None, 4), (2, 4)), ((1, 4), (5, 4)), (None, (3, 7, 7))],
)
def test_samples_on_the_first_axis_fit(
    shape: tuple[int | str | None, ...] | None, array_shape: tuple[int, ...]
) -> None:
    _check_array(Path("c.npz"), _spec(shape), np.zeros(array_shape, np.float32))


@pytest.mark.parametrize(
    ("shape", "array_shape"),
    [
        ((2, 4), (5, 4)),  # a fixed batch of 2 cannot be fed one sample at a time
        (("batch", 4), (5, 3)),
        (("batch", 4), (5, 4, 1)),
        (("batch", 4), ()),
        ((), (3,)),
    ],
)
def test_what_does_not_fit_is_refused(
    shape: tuple[int | str | None, ...], array_shape: tuple[int, ...]
) -> None:
    with pytest.raises(InputError, match="store samples along the first axis"):
        _check_array(Path("c.npz"), _spec(shape), np.zeros(array_shape, np.float32))
