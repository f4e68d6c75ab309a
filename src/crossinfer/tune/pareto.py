"""The Pareto front: the points no other point beats on every axis at once.

Each axis says whether higher or lower is better; ties on every axis keep both points.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def dominates(a: Sequence[float], b: Sequence[float], higher_is_better: Sequence[bool]) -> bool:
    """True when `a` is at least as good as `b` on every axis and better on one."""
    if not len(a) == len(b) == len(higher_is_better):
        raise ValueError(f"points of {len(a)} and {len(b)} values on {len(higher_is_better)} axes")
    strictly = False
    for x, y, up in zip(a, b, higher_is_better, strict=True):
        if (x < y) if up else (x > y):
            return False
        if x != y:
            strictly = True
    return strictly


def pareto_front(points: Mapping[K, Sequence[float]], higher_is_better: Sequence[bool]) -> list[K]:
    """The keys of the non-dominated points, in the order given (O(n^2): spaces are small)."""
    keys = list(points)
    return [
        k
        for k in keys
        if not any(
            other != k and dominates(points[other], points[k], higher_is_better) for other in keys
        )
    ]


def dominated_by(
    key: K, points: Mapping[K, Sequence[float]], higher_is_better: Sequence[bool]
) -> list[K]:
    """The points that dominate `key`'s: who beats it on every axis."""
    return [
        other
        for other in points
        if other != key and dominates(points[other], points[key], higher_is_better)
    ]
