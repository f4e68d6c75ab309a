"""Calibration data for static quantization: from .npz files, a zoo model's data set, or synthetic.

Every way the data can fail to fit the model ends in an InputError naming the file and the fix.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crossinfer.backends.base import validate_feeds
from crossinfer.check.inputs import random_inputs
from crossinfer.errors import InputError
from crossinfer.model import ModelArtifact, TensorSpec
from crossinfer.passes.base import CalibrationData, LabelledSet
from crossinfer.tensor_specs import dtype_fits, has_batch_dim, shape_fits
from crossinfer.zoo import zoo_dataset

SYNTHETIC = "synthetic"
LABELS = "labels"  # an optional array beside the inputs: one class per sample row
# Random inputs say nothing about real activation ranges; more of them only cost time.
SYNTHETIC_SAMPLES = 32
_HOW_TO_WRITE = "write one with numpy.savez(path, **{input_name: array_with_samples_first})"


def load_calibration(
    source: str | Path | None,
    artifact: ModelArtifact,
    *,
    max_samples: int = 128,
    seed: int = 0,
) -> CalibrationData:
    """Calibration samples (batch 1 each) for `artifact`.

    `source`: an .npz of arrays named like the model inputs (samples along the first axis, an
    optional `labels` array), a directory of such files, "synthetic", a zoo spec, or None for
    the zoo model's own data set. More than `max_samples` samples: a seeded subset is kept.
    """
    if max_samples < 1:
        raise InputError(f"max_samples must be at least 1, got {max_samples}")
    if source is None:
        return _from_zoo(artifact.source, artifact, max_samples, seed, asked=False)
    text = str(source)
    if text == SYNTHETIC:
        return _synthetic(artifact, max_samples, seed)
    if text.startswith("zoo:"):
        return _from_zoo(text, artifact, max_samples, seed, asked=True)
    path = Path(source)
    if not path.exists():
        raise InputError(
            f"calibration data '{path}' does not exist: pass an .npz file, a directory of .npz "
            "files, or 'synthetic'"
        )
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files:
        raise InputError(
            f"calibration directory '{path}' holds no .npz files: put one or more there "
            f"({_HOW_TO_WRITE})"
        )
    feeds: dict[str, list[np.ndarray]] = {spec.name: [] for spec in artifact.inputs}
    labels: list[np.ndarray] = []
    for file in files:
        arrays, file_labels = _read_npz(file, artifact.inputs)
        for name, array in arrays.items():
            feeds[name].append(array)
        if file_labels is not None:
            labels.append(file_labels)
    merged = {name: np.concatenate(parts) for name, parts in feeds.items()}
    # Labels only count when every file has them: otherwise rows and labels would not line up.
    all_labels = np.concatenate(labels) if len(labels) == len(files) else None
    where = f"'{path}'" if len(files) == 1 else f"'{path}' ({len(files)} .npz files)"
    return _subset(merged, all_labels, where, max_samples, seed, synthetic=False)


def _read_npz(
    path: Path, specs: tuple[TensorSpec, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if path.is_dir() or path.suffix != ".npz":
        raise InputError(
            f"calibration data '{path}' is not an .npz file: pass an .npz file, a directory "
            "of .npz files, or 'synthetic'"
        )
    if path.stat().st_size == 0:
        raise InputError(f"calibration file '{path}' is empty (0 bytes): {_HOW_TO_WRITE}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(
            f"calibration file '{path}' is not a readable .npz ({exc}): {_HOW_TO_WRITE}"
        ) from exc
    if not arrays:
        raise InputError(f"calibration file '{path}' holds no arrays: {_HOW_TO_WRITE}")
    labels = arrays.pop(LABELS, None)
    expected = [spec.name for spec in specs]
    unknown = [name for name in arrays if name not in expected]
    missing = [name for name in expected if name not in arrays]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"array(s) {_names(unknown)} that are not model inputs")
        if missing:
            problems.append(f"no array for input(s) {_names(missing)}")
        raise InputError(
            f"calibration file '{path}' has {' and '.join(problems)}: the model takes "
            f"{_names(expected)}; name each array after its input"
        )
    rows: set[int] = set()
    for spec in specs:
        array = arrays[spec.name]
        _check_array(path, spec, array)
        rows.add(array.shape[0])
    if len(rows) > 1:
        counts = ", ".join(f"'{s.name}' {arrays[s.name].shape[0]}" for s in specs)
        raise InputError(
            f"calibration file '{path}' has different sample counts per input ({counts}): "
            "every array needs the same number of rows"
        )
    count = rows.pop()
    if count == 0:
        raise InputError(f"calibration file '{path}' holds 0 samples: {_HOW_TO_WRITE}")
    if labels is not None and labels.shape[:1] != (count,):
        raise InputError(
            f"calibration file '{path}': '{LABELS}' has shape {list(labels.shape)}, expected "
            f"one label per sample ({count})"
        )
    return arrays, labels


def _check_array(path: Path, spec: TensorSpec, array: np.ndarray) -> None:
    if not dtype_fits(spec, array.dtype):
        raise InputError(
            f"calibration file '{path}': array '{spec.name}' is {array.dtype.name.upper()}, the "
            f"model input expects {spec.dtype.upper()} {spec.shape_str()}: convert it with "
            f".astype('{spec.dtype}')"
        )
    if spec.shape is None:
        return
    # the first axis counts samples; a fixed batch dim is checked per sample, as 1
    samples_axis = bool(spec.shape) and (has_batch_dim(spec) or spec.shape[0] == 1)
    fits = array.ndim >= 1 and samples_axis and shape_fits(spec.shape[1:], array.shape[1:])
    if not fits:
        raise InputError(
            f"calibration file '{path}': array '{spec.name}' has shape {list(array.shape)}, the "
            f"model input is {spec.shape_str()} ({spec.dtype}): store samples along the first "
            "axis with the other dims as the model has them"
        )


def _from_zoo(
    spec: str, artifact: ModelArtifact, max_samples: int, seed: int, *, asked: bool
) -> CalibrationData:
    dataset = zoo_dataset(spec) if spec.startswith("zoo:") else None
    if dataset is None:
        what = f"{spec} has no data set" if asked else f"{spec} has no data set of its own"
        raise InputError(
            f"no calibration data for {artifact.source}: {what}; pass --calibration FILE.npz "
            "(or a directory of .npz files) with representative inputs, or --calibration "
            "synthetic (seeded random inputs, not representative)"
        )
    names = [s.name for s in artifact.inputs]
    if sorted(dataset.inputs) != sorted(names):
        raise InputError(
            f"{spec}'s data set has inputs {_names(list(dataset.inputs))} but {artifact.source} "
            f"takes {_names(names)}: pass --calibration FILE.npz for this model"
        )
    where = f"{spec} data set: {dataset.description}"
    return _subset(dict(dataset.inputs), dataset.labels, where, max_samples, seed, synthetic=False)


def _synthetic(artifact: ModelArtifact, max_samples: int, seed: int) -> CalibrationData:
    count = min(max_samples, SYNTHETIC_SAMPLES)
    samples = tuple(random_inputs(artifact.inputs, batch=1, seed=seed + i) for i in range(count))
    return CalibrationData(
        samples=samples,
        source=f"synthetic: seeded random inputs, not representative data ({count} samples, "
        f"seed {seed})",
        synthetic=True,
    )


def _subset(
    arrays: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    where: str,
    max_samples: int,
    seed: int,
    *,
    synthetic: bool,
) -> CalibrationData:
    total = next(iter(arrays.values())).shape[0]
    if total > max_samples:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(total, size=max_samples, replace=False))
        taken = f"{max_samples} of {total} samples, seeded subset (seed {seed})"
    else:
        rows = np.arange(total)
        taken = f"{total} samples"
    samples = tuple(
        {name: np.ascontiguousarray(array[row : row + 1]) for name, array in arrays.items()}
        for row in rows
    )
    return CalibrationData(
        samples=samples,
        source=f"{where} ({taken})",
        synthetic=synthetic,
        labels=None if labels is None else np.asarray(labels)[rows],
    )


def _names(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def load_labelled_set(path: Path | None, artifact: ModelArtifact) -> LabelledSet | None:
    """The set top-1 accuracy is measured on: an .npz of inputs plus `labels`, or the zoo model's."""
    if path is None:
        if not artifact.source.startswith("zoo:"):
            return None
        data = zoo_dataset(artifact.source)
        return None if data is None else LabelledSet(data.inputs, data.labels, data.description)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"--dataset '{path}' is not a readable .npz: {exc}") from exc
    labels = arrays.pop(LABELS, None)
    if labels is None:
        raise InputError(f"--dataset '{path}' has no '{LABELS}' array: save one next to the inputs")
    inputs = validate_feeds(artifact.inputs, arrays, model=f"{artifact.source} (--dataset {path})")
    rows = {name: a.shape[0] for name, a in inputs.items()}
    if any(n != len(labels) for n in rows.values()):
        raise InputError(
            f"--dataset '{path}' has {len(labels)} labels but input rows {rows}: one label per row"
        )
    return LabelledSet(inputs, labels, f"{path} ({len(labels)} labelled samples)")
