"""Input tensors for a model: seeded random ones of the right dtype and shape, or from an .npz file."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from crossinfer.backends.base import validate_feeds
from crossinfer.errors import InputError, UsageError
from crossinfer.model import Dim, TensorSpec

DEFAULT_DIM = 16  # for symbolic dimensions other than the batch (sequence lengths, image sizes)


def concrete_shape(
    spec: TensorSpec, *, batch: int = 1, dims: Mapping[str, int] | None = None
) -> tuple[int, ...]:
    """Fix every symbolic dim: named overrides first, the leading dim is the batch, else 16."""
    dims = dims or {}
    if spec.shape is None:
        raise InputError(
            f"input '{spec.name}' has no known rank: pass its values with --inputs FILE.npz"
        )
    out = []
    for i, dim in enumerate(spec.shape):
        out.append(_resolve(dim, i, batch, dims))
    return tuple(out)


def symbolic_dims(inputs: Sequence[TensorSpec]) -> dict[str, bool]:
    """The model's named symbolic dims, in input order: name -> whether it leads some input."""
    names: dict[str, bool] = {}
    for spec in inputs:
        for i, dim in enumerate(spec.shape or ()):
            if isinstance(dim, str) and dim:
                names[dim] = names.get(dim, False) or i == 0
    return names


def check_dim_names(inputs: Sequence[TensorSpec], dims: Mapping[str, int]) -> None:
    """Refuse a --dim NAME the model does not have: a misspelt name would be ignored silently."""
    known = symbolic_dims(inputs)
    for name in dims:
        if name in known:
            continue
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.4)
        if not known:
            have = "it has none (every dim is fixed)"
        else:
            have = f"its symbolic dims are {', '.join(known)}"
        hint = f"; did you mean --dim {close[0]}={dims[name]}?" if close else ""
        raise UsageError(f"--dim {name}: the model has no symbolic dim '{name}': {have}{hint}")


def dim_choices(
    inputs: Sequence[TensorSpec], *, batch: int = 1, dims: Mapping[str, int] | None = None
) -> list[str]:
    """What each symbolic dim is set to and why, e.g. "seq=16 (default; --dim seq=N)"."""
    dims = dims or {}
    out = []
    for name, leads in symbolic_dims(inputs).items():
        if name in dims:
            out.append(f"{name}={dims[name]} (--dim)")
        elif leads:
            out.append(f"{name}={batch} (--batch)")
        else:
            out.append(f"{name}={DEFAULT_DIM} (default; --dim {name}=N)")
    return out


def _resolve(dim: Dim, index: int, batch: int, dims: Mapping[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    if isinstance(dim, str) and dim in dims:
        return dims[dim]
    return batch if index == 0 else DEFAULT_DIM


def random_inputs(
    inputs: Sequence[TensorSpec],
    *,
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded inputs: floats ~ N(0,1); masks all ones; type ids 0/1; other integers in [0, 100).

    Integer ranges are kept small because integer inputs usually index an embedding table.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = concrete_shape(spec, batch=batch, dims=dims)
        lname = spec.name.lower()
        if spec.dtype == "bool":
            feeds[spec.name] = rng.random(shape) < 0.5
        elif spec.dtype in ("bfloat16", "unknown") or spec.dtype.startswith("float8"):
            raise InputError(
                f"input '{spec.name}' is {spec.dtype}, which numpy cannot make: "
                "pass its values with --inputs FILE.npz"
            )
        elif np.dtype(spec.dtype).kind in "iu":
            if "mask" in lname:
                values = np.ones(shape, dtype=np.int64)
            elif "type" in lname or "segment" in lname:
                values = rng.integers(0, 2, size=shape)
            else:
                values = rng.integers(0, 100, size=shape)
            feeds[spec.name] = values.astype(spec.dtype)
        elif np.dtype(spec.dtype).kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            raise InputError(
                f"input '{spec.name}' is {spec.dtype}: pass its values with --inputs FILE.npz"
            )
    return feeds


def load_inputs(
    path: Path, inputs: Sequence[TensorSpec], *, model: str = "model"
) -> dict[str, np.ndarray]:
    """Read feeds from an .npz whose array names are the model's input names."""
    if not path.exists():
        raise InputError(f"inputs file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(
            f"inputs file '{path}' is not a readable .npz ({exc}): write one with "
            "numpy.savez(path, **{input_name: array})"
        ) from exc
    return validate_feeds(inputs, feeds, model=f"{model} (inputs from {path})")
