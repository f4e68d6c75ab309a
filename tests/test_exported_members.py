"""crossinfer.__all__ is sorted, complete and importable (as httpx checks its own)."""

from __future__ import annotations

import inspect

import crossinfer


def test_all_is_sorted() -> None:
    # constants first, then the rest, each group in plain sorted order (ruff's RUF022 style)
    assert crossinfer.__all__ == sorted(crossinfer.__all__, key=lambda n: (not n.isupper(), n))


def test_all_names_every_public_class_and_function() -> None:
    public = {
        name
        for name, value in vars(crossinfer).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__.startswith("crossinfer")
    }
    assert public <= set(crossinfer.__all__)
    for name in crossinfer.__all__:
        assert hasattr(crossinfer, name), name
