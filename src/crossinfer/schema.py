"""Declared, strict schemas for crossinfer's TOML files: one table of keys and checks each.

A file format declares its tables as mappings of key -> check (a function that returns the
value, converted, or raises ValueError saying what the value must be). `read_table` refuses a
value that is not a table, a key that is not declared (naming the nearest declared one), a
missing required key and a value its check refuses; every message names the file and the key,
e.g. ``spec.toml: [deployment.options] unknown key 'treads': did you mean 'threads'?``.

The formats: the deployment spec (`crossinfer.spec`), serve's ``config.toml``
(`crossinfer.serve.repository`) and the hardware catalog (`crossinfer.hardware.catalog`). The
serving settings the first two share are declared once, in `crossinfer.spec`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crossinfer.errors import CrossinferError

__all__ = [
    "Check",
    "Key",
    "boolean",
    "integer",
    "integer_list",
    "number",
    "number_table",
    "one_of",
    "read_table",
    "scalar_table",
    "table",
    "text",
    "text_list",
    "unknown_key_message",
]

Check = Callable[[Any], Any]
"""Returns the value (converted) or raises ValueError("must be ..., got ...")."""


@dataclass(frozen=True)
class Key:
    """A declared key: its check and whether the table must have it."""

    check: Check
    required: bool = False


def unknown_key_message(key: str, known: Iterable[str], *, what: str = "key") -> str:
    """``unknown key 'treads': did you mean 'threads'?`` (or the known keys when none is near)."""
    known = sorted(known)
    near = difflib.get_close_matches(key, known, n=1)
    if near:
        return f"unknown {what} {key!r}: did you mean {near[0]!r}?"
    return f"unknown {what} {key!r}; known: {', '.join(known)}"


def read_table(
    raw: Any,
    schema: Mapping[str, Key | Check],
    *,
    where: str,
    table: str = "",
    flat: bool = False,
    error: type[CrossinferError],
) -> dict[str, Any]:
    """The keys of `raw` that it has, checked against `schema`; raises `error` naming the key.

    `where` names the file (or the command line); `table` the TOML table ("" for the top level
    of a document; `flat` when the document is that one table, like serve's config.toml).
    """
    place = f"[{table}] " if table else ""
    if not isinstance(raw, Mapping):
        raise error(f"{where}: {place or 'the document '}must be a table, got {raw!r}")
    declared = {name: k if isinstance(k, Key) else Key(k) for name, k in schema.items()}
    for key in raw:
        if key not in declared:
            what = "key" if table or flat else "top-level key"
            message = unknown_key_message(str(key), declared, what=what)
            raise error(f"{where}: {place}{message}")
    missing = [name for name, k in declared.items() if k.required and name not in raw]
    if missing:
        raise error(f"{where}: {place}missing key(s) {', '.join(repr(m) for m in missing)}")
    values = {}
    prefix = f"{table}." if table else ""
    for key, value in raw.items():
        try:
            values[key] = declared[key].check(value)
        except ValueError as exc:
            raise error(f"{where}: {prefix}{key} {exc}") from None
    return values


# --- checks ---------------------------------------------------------------------------------


def text(*, empty: bool = False) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or (not empty and not value):
            kind = "a string" if empty else "a non-empty string"
            raise ValueError(f"must be {kind}, got {value!r}")
        return value

    return check


def integer(*, minimum: int | None = None) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"must be {kind}, got {value!r}")
        return value

    return check


def number(*, positive: bool = False) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {value!r}")
        if positive and value <= 0:
            raise ValueError(f"must be a positive number, got {value!r}")
        return float(value)

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def one_of(choices: Iterable[str], *, lower: bool = False) -> Check:
    """A string among `choices` (lowercased first when `lower`)."""
    known = tuple(choices)

    def check(value: Any) -> str:
        chosen = value.lower() if lower and isinstance(value, str) else value
        if chosen not in known:
            raise ValueError(f"{value!r} is not one of {', '.join(known)}")
        return str(chosen)

    return check


def integer_list(*, minimum: int | None = None) -> Check:
    """A list of integers (each >= minimum), returned as a tuple."""
    item = integer(minimum=minimum)

    kind = "positive integers" if minimum == 1 else "integers"
    if minimum is not None and minimum != 1:
        kind += f" >= {minimum}"

    def check(value: Any) -> tuple[int, ...]:
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list of {kind}, got {value!r}")
        try:
            return tuple(item(v) for v in value)
        except ValueError:
            raise ValueError(f"must be a list of {kind}, got {value!r}") from None

    return check


def text_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings, got {value!r}")
    return tuple(value)


def table(value: Any) -> dict[str, Any]:
    """Any table (free-form records such as a spec's [measured])."""
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table, got {value!r}")
    return dict(value)


def scalar_table(value: Any) -> dict[str, str]:
    """A table of runtime settings passed through as text: strings, numbers or booleans."""
    if not isinstance(value, Mapping) or not all(
        isinstance(v, str | int | float | bool) for v in value.values()
    ):
        raise ValueError(f"must be a table of runtime settings (strings or numbers), got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


def number_table(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table of numbers, got {value!r}")
    out = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise ValueError(f"must be a table of numbers, got {key} = {item!r}")
        out[str(key)] = float(item)
    return out
