"""The Pareto front on constructed points: who is kept, who is dominated, and by whom."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossinfer.tune.pareto import dominated_by, dominates, pareto_front

UP_DOWN = (True, False)  # throughput up, latency down


def test_front_keeps_the_trade_offs_and_drops_the_dominated() -> None:
    points = {
        "fast-but-slow-p99": (100.0, 50.0),
        "balanced": (80.0, 20.0),
        "snappy": (20.0, 2.0),
        "worse-than-balanced": (70.0, 25.0),
        "worse-than-snappy": (20.0, 3.0),
    }
    assert pareto_front(points, UP_DOWN) == ["fast-but-slow-p99", "balanced", "snappy"]
    assert dominated_by("worse-than-balanced", points, UP_DOWN) == ["balanced"]
    assert dominated_by("worse-than-snappy", points, UP_DOWN) == ["snappy"]


def test_equal_points_both_stay_on_the_front() -> None:
    points = {"a": (10.0, 1.0), "b": (10.0, 1.0)}
    assert pareto_front(points, UP_DOWN) == ["a", "b"]
    assert not dominates((10.0, 1.0), (10.0, 1.0), UP_DOWN)


def test_direction_of_each_axis_matters() -> None:
    assert dominates((2.0, 1.0), (1.0, 2.0), (True, False))
    assert not dominates((2.0, 1.0), (1.0, 2.0), (False, True))
    assert dominates((1.0, 2.0), (2.0, 1.0), (False, True))


def test_axes_must_agree() -> None:
    with pytest.raises(ValueError, match="axes"):
        dominates((1.0,), (1.0, 2.0), UP_DOWN)


@given(
    st.dictionaries(
        st.integers(0, 50),
        st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0, 100)),
        min_size=1,
        max_size=25,
    )
)
def test_front_is_exactly_the_undominated_points(points: dict[int, tuple[float, ...]]) -> None:
    axes = (True, False, False)
    front = pareto_front(points, axes)
    assert front  # a non-empty set always has a front
    for key in front:
        assert not dominated_by(key, points, axes)
    for key in set(points) - set(front):
        assert any(dominates(points[f], points[key], axes) for f in front)
