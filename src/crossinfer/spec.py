"""The deployment spec: what `crossinfer tune` recommends and `crossinfer serve` loads.

The contract between tune and serve: both import it, neither owns it.

A TOML file a person can read and edit. It names the model artefact (a path relative to the
spec file, so a folder holding both can move), the backend, device, precision, batching and
runtime settings, and the figures the choice was made on::

    [deployment]
    name = "resnet50"
    model = "resnet50.int8.onnx"
    model_sha256 = "4f1c..."
    backend = "openvino"
    device = "cpu"
    precision = "fp32"          # what the runtime is asked for (SessionOptions.precision)
    recipe = "int8"             # how the model file was made (optimize's preset): its own types

    [deployment.options]        # SessionOptions: threads, streams, performance_hint, ...
    threads = 2

    [deployment.batching]       # the dynamic batcher of `crossinfer serve`
    max_batch_size = 8
    max_queue_delay_us = 500

    [measured]                  # what tune saw: throughput, p99_ms, accuracy, ...
    throughput = 88.1

    [source]                    # how it was chosen: objective, constraints, machine, version
    objective = "throughput"

Loading checks what would otherwise fail later and far away: the artefact exists (and still
has the recorded hash), the backend is one crossinfer knows, every key is understood.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from crossinfer.backends.base import Precision, SessionOptions, Target, backend_entry
from crossinfer.errors import CrossinferError, ModelError, UsageError, short_message
from crossinfer.model import ModelArtifact, load_model

__all__ = [
    "SPEC_VERSION",
    "BatchingSpec",
    "DeploymentSpec",
    "SpecError",
    "check_artefact_hash",
    "load_spec",
    "write_spec",
]

SPEC_VERSION = 1
"""Written as ``spec_version``; a file from a newer crossinfer is refused, not misread."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class SpecError(CrossinferError):
    """A deployment spec file cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class BatchingSpec:
    """Dynamic batching for serving (Triton's meaning; max_batch_size 0 turns batching off)."""

    max_batch_size: int = 0
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    instances: int = 1

    def problems(self) -> list[str]:
        found = []
        for name in ("max_batch_size", "max_queue_delay_us", "max_queue_size"):
            if getattr(self, name) < 0:
                found.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.instances < 1:
            found.append(f"instances must be >= 1, got {self.instances}")
        bad = [p for p in self.preferred_batch_sizes if not 1 <= p <= self.max_batch_size]
        if bad:
            found.append(
                f"preferred_batch_sizes {list(self.preferred_batch_sizes)} must lie in "
                f"1..max_batch_size ({self.max_batch_size})"
            )
        return found


@dataclass(frozen=True)
class DeploymentSpec:
    """One way to run one model, chosen and measured."""

    name: str  # the model name clients use (KServe v2 URLs)
    model: Path  # absolute once loaded; written relative to the spec file where possible
    backend: str
    device: str
    options: SessionOptions = field(default_factory=SessionOptions)
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    model_sha256: str | None = None
    recipe: str | None = None  # how the artefact was made ("int8", "fp16"...); None: as given
    measured: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> Target:
        return Target(self.backend, self.device)

    @property
    def precision(self) -> Precision:
        return self.options.precision


def write_spec(spec: DeploymentSpec, path: str | Path) -> Path:
    """Write `spec` as TOML (atomically); the model path is stored relative to the file if it can be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = Path(spec.model).resolve()
    try:
        model_text = model.relative_to(path.parent.resolve()).as_posix()
    except ValueError:
        model_text = str(model)
    deployment: dict[str, Any] = {
        "name": spec.name,
        "model": model_text,
        "backend": spec.backend,
        "device": spec.device,
        "precision": str(spec.options.precision),
    }
    if spec.model_sha256:
        deployment["model_sha256"] = spec.model_sha256
    if spec.recipe:
        deployment["recipe"] = spec.recipe
    options: dict[str, Any] = {
        key: value
        for key, value in (
            ("threads", spec.options.threads),
            ("graph_optimization_level", spec.options.graph_optimization_level),
            ("performance_hint", spec.options.performance_hint),
            ("streams", spec.options.streams),
        )
        if value is not None
    }
    if spec.options.extra:
        options["extra"] = dict(spec.options.extra)
    if options:
        deployment["options"] = options
    batching = dataclasses.asdict(spec.batching)
    batching["preferred_batch_sizes"] = list(spec.batching.preferred_batch_sizes)
    deployment["batching"] = batching
    document: dict[str, Any] = {"spec_version": SPEC_VERSION, "deployment": deployment}
    if spec.measured:
        document["measured"] = _toml_safe(spec.measured)
    if spec.source:
        document["source"] = _toml_safe(spec.source)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(tomli_w.dumps(document), encoding="utf-8")
    tmp.replace(path)
    return path


def load_spec(path: str | Path, *, check_hash: bool = True) -> DeploymentSpec:
    """Read and check a spec file; every problem is a SpecError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(
            f"deployment spec {path}: no such file (write one with `crossinfer tune MODEL`)"
        )
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"deployment spec {path}: not valid TOML: {exc}") from exc
    return _from_document(document, path, check_hash=check_hash)


def _from_document(document: dict[str, Any], path: Path, *, check_hash: bool) -> DeploymentSpec:
    def fail(message: str) -> SpecError:
        return SpecError(f"deployment spec {path}: {message}")

    version = document.get("spec_version", SPEC_VERSION)
    if not isinstance(version, int) or version > SPEC_VERSION:
        raise fail(
            f"spec_version {version!r} is newer than this crossinfer understands "
            f"({SPEC_VERSION}): upgrade crossinfer"
        )
    unknown = set(document) - {"spec_version", "deployment", "measured", "source"}
    if unknown:
        raise fail(f"unknown top-level key(s) {sorted(unknown)}")
    deployment = document.get("deployment")
    if not isinstance(deployment, dict):
        raise fail("missing the [deployment] table")
    allowed = {"name", "model", "model_sha256", "recipe", "backend", "device", "precision"}
    allowed |= {"options", "batching"}
    unknown = set(deployment) - allowed
    if unknown:
        raise fail(f"unknown key(s) in [deployment]: {sorted(unknown)}; known: {sorted(allowed)}")

    def text(key: str, required: bool = True) -> str | None:
        value = deployment.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise fail(f"deployment.{key} must be a non-empty string, got {value!r}")
        return value

    name = text("name")
    assert name is not None
    if not _NAME.match(name):
        raise fail(
            f"deployment.name {name!r} must be letters, digits, '_', '.' or '-' "
            "(it becomes part of the serving URL)"
        )
    model_text = text("model")
    assert model_text is not None
    model = Path(model_text).expanduser()
    if not model.is_absolute():
        model = (path.parent / model).resolve()
    if not model.is_file():
        raise fail(
            f"deployment.model {model_text!r} does not exist (looked for {model}); "
            "keep the model next to the spec or write its absolute path"
        )
    backend = text("backend")
    assert backend is not None
    try:
        backend_entry(backend)
    except UsageError as exc:
        raise fail(f"deployment.backend: {exc}") from None
    device = text("device")
    assert device is not None
    precision_text = text("precision", required=False) or "fp32"
    try:
        precision = Precision(precision_text.lower())
    except ValueError:
        known = ", ".join(p.value for p in Precision)
        raise fail(f"deployment.precision {precision_text!r} is not one of {known}") from None
    sha = text("model_sha256", required=False)
    if sha is not None and check_hash:
        try:
            artifact = load_model(model)  # its hash covers external data too
        except ModelError as exc:
            raise fail(f"deployment.model: {short_message(exc)}") from exc
        check_artefact_hash(path, artifact, sha)
    recipe = text("recipe", required=False)
    options = _options(deployment.get("options", {}), precision, fail)
    batching = _batching(deployment.get("batching", {}), fail)
    measured = document.get("measured", {})
    source = document.get("source", {})
    if not isinstance(measured, dict) or not isinstance(source, dict):
        raise fail("[measured] and [source] must be tables")
    return DeploymentSpec(
        name=name,
        model=model,
        backend=backend,
        device=device,
        options=options,
        batching=batching,
        model_sha256=sha,
        recipe=recipe,
        measured=measured,
        source=source,
    )


def check_artefact_hash(spec_path: Path, artifact: ModelArtifact, expected: str) -> None:
    """Refuse an artefact that is not the one the spec was measured on.

    For callers that load the model anyway (``crossinfer serve``): they read the spec with
    ``check_hash=False`` and call this on their own artefact, so the model is loaded once.
    """
    if artifact.sha256 != expected:
        raise SpecError(
            f"deployment spec {spec_path}: deployment.model {artifact.path} has sha256 "
            f"{artifact.sha256[:12]}..., not the {expected[:12]}... the spec was measured on: "
            "re-run `crossinfer tune` or fix the path"
        )


def _options(raw: Any, precision: Precision, fail: Any) -> SessionOptions:
    if not isinstance(raw, dict):
        raise fail("deployment.options must be a table")
    ints = {"threads", "streams"}
    texts = {"graph_optimization_level", "performance_hint"}
    unknown = set(raw) - ints - texts - {"extra"}
    if unknown:
        raise fail(
            f"unknown key(s) in [deployment.options]: {sorted(unknown)}; "
            f"known: {sorted(ints | texts | {'extra'})}"
        )
    for key in ints & set(raw):
        if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1:
            raise fail(f"deployment.options.{key} must be a positive integer, got {raw[key]!r}")
    for key in texts & set(raw):
        if not isinstance(raw[key], str):
            raise fail(f"deployment.options.{key} must be a string, got {raw[key]!r}")
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise fail("deployment.options.extra must be a table of strings")
    return SessionOptions(
        precision=precision,
        threads=raw.get("threads"),
        graph_optimization_level=raw.get("graph_optimization_level"),
        performance_hint=raw.get("performance_hint"),
        streams=raw.get("streams"),
        extra={str(k): str(v) for k, v in extra.items()},
    )


def _batching(raw: Any, fail: Any) -> BatchingSpec:
    if not isinstance(raw, dict):
        raise fail("deployment.batching must be a table")
    fields = {f.name for f in dataclasses.fields(BatchingSpec)}
    unknown = set(raw) - fields
    if unknown:
        raise fail(
            f"unknown key(s) in [deployment.batching]: {sorted(unknown)}; known: {sorted(fields)}"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "preferred_batch_sizes":
            if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise fail(f"deployment.batching.{key} must be a list of integers, got {value!r}")
            values[key] = tuple(value)
        elif not isinstance(value, int) or isinstance(value, bool):
            raise fail(f"deployment.batching.{key} must be an integer, got {value!r}")
        else:
            values[key] = value
    batching = BatchingSpec(**values)
    problems = batching.problems()
    if problems:
        raise fail("[deployment.batching]: " + "; ".join(problems))
    return batching


def _toml_safe(value: Any) -> Any:
    """TOML has no null: drop None values, turn tuples into lists, keep the rest."""
    if isinstance(value, Mapping):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_toml_safe(v) for v in value if v is not None]
    if isinstance(value, Path):
        return str(value)
    return value
