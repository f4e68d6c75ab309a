"""The text forms of options shared by the commands and the Python API that takes them as text.

Comma lists of batch sizes, NAME=SIZE dims, KEY=VALUE backend knobs, precision and OpenVINO hint
names: each parser refuses bad text with a UsageError that names the option and shows a good one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from crossinfer.errors import UsageError

if TYPE_CHECKING:
    from crossinfer.backends.base import Precision

__all__ = [
    "HINTS",
    "parse_batch_sizes",
    "parse_dims",
    "parse_hint",
    "parse_knobs",
    "parse_names",
    "parse_precision",
]

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """`1,8,32` -> (1, 8, 32); at least one size, each positive."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(size < 1 for size in sizes):
        raise UsageError(f"--batch '{text}' is not a comma list of positive integers, e.g. 1,8,32")
    return sizes


def parse_names(text: str | None) -> tuple[str, ...]:
    """`onnxruntime, OpenVINO` -> ("onnxruntime", "openvino"); None or blank -> ()."""
    return tuple(part.strip().lower() for part in (text or "").split(",") if part.strip())


def parse_dims(items: Sequence[str]) -> dict[str, int]:
    """`--dim NAME=SIZE` items -> {NAME: SIZE}."""
    dims: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.isdigit() or int(value) < 1:
            raise UsageError(
                f"--dim '{item}' is not NAME=SIZE with a positive integer SIZE, e.g. --dim seq=128"
            )
        dims[name] = int(value)
    return dims


def parse_knobs(values: Sequence[str]) -> dict[str, str]:
    """`--option KEY=VALUE` pairs; the backend checks the keys it takes when it prepares."""
    options: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(
                f"--option '{text}' is not KEY=VALUE: write e.g. --option mode=compile"
            )
        if key in options:
            raise UsageError(f"--option {key} given twice ({options[key]} and {value.strip()})")
        options[key] = value.strip()
    return options


def parse_precision(text: str) -> Precision:
    """`FP16` -> Precision.FP16."""
    # imported here: the command line parses its options before it loads numpy and onnx
    from crossinfer.backends.base import Precision

    try:
        return Precision(text.lower())
    except ValueError:
        raise UsageError(
            f"--precision '{text}' is not one of {', '.join(p.value for p in Precision)}"
        ) from None


def parse_hint(text: str | None) -> str | None:
    """An OpenVINO performance hint, upper-cased; None stays None."""
    if text is None:
        return None
    if text.upper() not in HINTS:
        raise UsageError(f"--hint '{text}' is not LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT")
    return text.upper()
