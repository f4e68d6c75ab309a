"""The built-in model zoo: ``zoo:NAME[?param=value&...]`` sources built locally, never downloaded.

Parses zoo specs, builds seeded, architecture-faithful ONNX models and caches them on disk.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from crossinfer.errors import ZooError
from crossinfer.zoo import bert, digits, mlp, mobilenet, resnet
from crossinfer.zoo._graph import seed_for

__all__ = [
    "ZOO_MODELS",
    "ZOO_PREFIX",
    "ZOO_SUMMARIES",
    "ZooDataset",
    "ZooSpec",
    "build_zoo_model",
    "default_cache_dir",
    "parse_zoo_spec",
    "zoo_dataset",
    "zoo_model_path",
]

ZOO_PREFIX = "zoo:"
CACHE_ENV = "CROSSINFER_CACHE_DIR"

_Builder = Callable[[Mapping[str, int], int, dict[str, str]], onnx.ModelProto]


@dataclass(frozen=True)
class _Param:
    default: int
    low: int
    high: int
    help: str

    @property
    def allowed(self) -> str:
        return f"an integer in {self.low}..{self.high} (default {self.default})"


@dataclass(frozen=True)
class _Family:
    build: _Builder
    version: int
    summary: str
    params: dict[str, _Param] = field(default_factory=dict)


_FAMILIES: dict[str, _Family] = {
    "mlp": _Family(
        mlp.build_mlp,
        mlp.VERSION,
        "784-hidden-hidden-10 perceptron, random weights",
        {"hidden": _Param(mlp.DEFAULT_HIDDEN, 1, mlp.MAX_HIDDEN, "hidden layer width")},
    ),
    "resnet18": _Family(resnet.build_resnet18, resnet.VERSION, "torchvision ResNet-18"),
    "resnet50": _Family(resnet.build_resnet50, resnet.VERSION, "torchvision ResNet-50 v1.5"),
    "mobilenetv2": _Family(
        mobilenet.build_mobilenetv2, mobilenet.VERSION, "torchvision MobileNetV2"
    ),
    "bert-base": _Family(
        bert.build_bert,
        bert.VERSION,
        "BERT-base encoder with pooler, random weights",
        {
            "seq": _Param(128, 1, bert.MAX_POSITIONS, "sequence length, fixed in the graph"),
            "layers": _Param(bert.MAX_LAYERS, 1, bert.MAX_LAYERS, "encoder layers"),
        },
    ),
    "digits": _Family(
        digits.build_digits, digits.VERSION, "64-64-10 MLP trained on scikit-learn digits"
    ),
}

ZOO_MODELS: tuple[str, ...] = tuple(_FAMILIES)

_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class ZooSpec:
    """A parsed zoo source: the model name and every parameter, defaults filled in, sorted.

    Holding all values (not just the ones given) makes equal models equal specs:
    ``zoo:bert-base`` and ``zoo:bert-base?seq=128`` are one spec, one cache file.
    """

    name: str
    params: tuple[tuple[str, int], ...] = ()

    @property
    def kwargs(self) -> dict[str, int]:
        return dict(self.params)

    @property
    def source(self) -> str:
        """The canonical spelling, ``zoo:bert-base?layers=12&seq=128``; parses back to self."""
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{ZOO_PREFIX}{self.name}" + (f"?{query}" if query else "")

    @property
    def file_stem(self) -> str:
        """Cache file name without suffix: the canonical spec plus the builder's version."""
        parts = [self.name, *(f"{k}={v}" for k, v in self.params), f"v{_family(self.name).version}"]
        return "_".join(parts)

    def __str__(self) -> str:
        return self.source


# eq=False: field-wise == on arrays has no single truth value; compare the arrays instead.
@dataclass(frozen=True, eq=False)
class ZooDataset:
    """A labelled held-out set for a zoo model: feeds by input name, and the true classes."""

    inputs: dict[str, np.ndarray] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    description: str


def parse_zoo_spec(source: str) -> ZooSpec:
    """Parse ``zoo:NAME[?k=v&...]`` (the ``zoo:`` prefix is optional) into a canonical ZooSpec."""
    text = source.strip()
    if text.startswith(ZOO_PREFIX):
        text = text[len(ZOO_PREFIX) :]
    name, _, query = text.partition("?")
    name = name.strip().lower()
    family = _family(name)

    given: dict[str, int] = {}
    for item in query.split("&") if query else []:
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        param = family.params.get(key)
        if param is None:
            raise ZooError(f"zoo:{name} has no parameter {key!r}; {_describe_params(name)}")
        if not sep or not _INTEGER.fullmatch(raw):
            raise ZooError(
                f"zoo:{name} parameter {key!r} must be {param.allowed}, got {raw!r} "
                "(not an integer)"
            )
        value = int(raw)
        if not param.low <= value <= param.high:
            raise ZooError(
                f"zoo:{name} parameter {key!r} must be {param.allowed}, got {value} (out of range)"
            )
        if key in given and given[key] != value:
            raise ZooError(f"zoo:{name} parameter {key!r} given twice ({given[key]} and {value})")
        given[key] = value

    values = {key: given.get(key, param.default) for key, param in family.params.items()}
    return ZooSpec(name, tuple(sorted(values.items())))


def build_zoo_model(spec: ZooSpec | str) -> onnx.ModelProto:
    """Build the model in memory (no cache); the same spec always gives identical bytes."""
    spec = _as_spec(spec)
    family = _family(spec.name)
    metadata = {"crossinfer.zoo.spec": spec.source, "crossinfer.zoo.version": str(family.version)}
    return family.build(spec.kwargs, seed_for(spec.source), metadata)


def default_cache_dir() -> Path:
    """``$CROSSINFER_CACHE_DIR``, else ``$XDG_CACHE_HOME/crossinfer``, else ``~/.cache/crossinfer``.

    The zoo keeps its files in a ``zoo/`` folder under this directory.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crossinfer"


def zoo_model_path(source: str | ZooSpec, *, cache_dir: Path | None = None) -> Path:
    """The cached ``.onnx`` file for a zoo spec, built and written on first use."""
    spec = _as_spec(source)
    path = _zoo_dir(cache_dir) / f"{spec.file_stem}.onnx"
    if not path.is_file():
        model = build_zoo_model(spec)
        _write_atomic(path, model.SerializeToString())
    if spec.name == "digits":
        _ensure_digits_dataset(spec, path.with_suffix(".npz"))
    return path


def zoo_dataset(source: str | ZooSpec, *, cache_dir: Path | None = None) -> ZooDataset | None:
    """The labelled held-out split shipped with a zoo model, or None if it has none.

    Only ``digits`` has one: the part of scikit-learn's digits its training never saw.
    """
    spec = _as_spec(source)
    if spec.name != "digits":
        return None
    path = _zoo_dir(cache_dir) / f"{spec.file_stem}.npz"
    _ensure_digits_dataset(spec, path)
    with np.load(path, allow_pickle=False) as data:
        inputs = {digits.INPUT: np.asarray(data[digits.INPUT], dtype=np.float32)}
        labels = np.asarray(data["labels"], dtype=np.int64)
        description = str(data["description"])
    return ZooDataset(inputs=inputs, labels=labels, description=description)


def _ensure_digits_dataset(spec: ZooSpec, path: Path) -> None:
    if path.is_file():
        return
    split = digits.load_split()
    buffer = io.BytesIO()
    # Keyed by the model's input name, so the archive alone says what to feed where.
    arrays: dict[str, Any] = {
        digits.INPUT: split.x_test,
        "labels": split.y_test,
        "description": np.asarray(split.description),
    }
    np.savez(buffer, **arrays)
    _write_atomic(path, buffer.getvalue())


def _as_spec(source: str | ZooSpec) -> ZooSpec:
    # A hand-made ZooSpec may be unsorted or miss defaults: round-trip it to the canonical form.
    return parse_zoo_spec(source.source if isinstance(source, ZooSpec) else source)


def _family(name: str) -> _Family:
    family = _FAMILIES.get(name)
    if family is None:
        close = difflib.get_close_matches(name, ZOO_MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ZooError(f"unknown zoo model {name!r}{hint}; known models: {', '.join(ZOO_MODELS)}")
    return family


def _describe_params(name: str) -> str:
    params = _FAMILIES[name].params
    if not params:
        return "it takes no parameters"
    allowed = ", ".join(
        f"{k}={p.low}..{p.high} ({p.help}, default {p.default})" for k, p in sorted(params.items())
    )
    return f"allowed: {allowed}"


def _zoo_dir(cache_dir: Path | None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "zoo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory and os.replace.

    Readers, even other processes building the same model at once, see either no file or a
    complete one, never a partial write.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _summary(name: str) -> str:
    return f"{_FAMILIES[name].summary}; {_describe_params(name)}"


# For listings (``crossinfer zoo``, help texts): one line per model, parameters included.
ZOO_SUMMARIES: dict[str, str] = {name: _summary(name) for name in ZOO_MODELS}
