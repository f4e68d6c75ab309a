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

    [scale]                     # `crossinfer serve --ray`: replicas and what each one reserves
    replicas = 2                # or min_replicas/max_replicas (+ target_ongoing_requests)
    num_cpus = 1.0
    num_gpus = 0.0              # fractions share a GPU: 0.5 puts two replicas on one

Loading checks what would otherwise fail later and far away: the artefact exists (and still
has the recorded hash), the backend is one crossinfer knows, every key is declared (an unknown
one is refused with the nearest declared name).

The serving settings (``[deployment.options]`` and ``[deployment.batching]`` here, the same keys
flat in serve's ``config.toml`` and on its command line) are declared once, in `OPTION_SCHEMA`
and `BATCHING_SCHEMA`, and read by one function, `read_serving_settings`, for every path.
`BatchingSpec` is the one batching record: the spec's, serve's and the batcher's.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from crossinfer import schema
from crossinfer.backends.base import Precision, SessionOptions, Target, backend_entry
from crossinfer.errors import CrossinferError, ModelError, SpecError, UsageError, short_message
from crossinfer.model import ModelArtifact, load_model
from crossinfer.schema import Key

__all__ = [
    "BATCHING_SCHEMA",
    "DEFAULT_MAX_QUEUE_SIZE",
    "OPTION_SCHEMA",
    "SCALE_SCHEMA",
    "SERVING_KEYS",
    "SPEC_VERSION",
    "BatchingSpec",
    "DeploymentSpec",
    "ScaleSpec",
    "ServingSettings",
    "check_artefact_hash",
    "load_spec",
    "read_scale",
    "read_serving_settings",
    "write_spec",
]

SPEC_VERSION = 1
"""Written as ``spec_version``; a file from a newer crossinfer is refused, not misread."""

DEFAULT_MAX_QUEUE_SIZE = 1024
"""Requests one model may queue: bounded by default, so overload is refused (503), not a crash."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, kw_only=True)
class BatchingSpec:
    """Dynamic batching for serving, with Triton's meaning: the spec's, serve's and the batcher's.

    max_batch_size 0 turns batching off (each request runs alone, its tensors unchanged); None
    lets serve decide from the model (batching when every tensor has a variable first dim), and
    must be settled before a batcher is built. max_queue_size 0 means unbounded. Priorities run 1
    (highest) .. priority_levels. Raises ValueError listing every problem.
    """

    max_batch_size: int | None = 0
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    instances: int = 1  # sessions (worker threads) serving the model
    default_timeout_us: int = 0  # 0: requests wait in the queue as long as it takes
    priority_levels: int = 1
    default_priority: int = 1

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        found = []
        if self.max_batch_size is not None and self.max_batch_size < 0:
            found.append(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        for name in ("max_queue_delay_us", "max_queue_size", "default_timeout_us"):
            if getattr(self, name) < 0:
                found.append(f"{name} must be >= 0, got {getattr(self, name)}")
        most = self.max_batch_size  # None: settled later, from the model; checked then
        if most is not None and not all(1 <= p <= most for p in self.preferred_batch_sizes):
            off = " (batching is off)" if most == 0 else ""
            found.append(
                f"preferred_batch_sizes {list(self.preferred_batch_sizes)} must lie in "
                f"1..max_batch_size ({most}){off}"
            )
        if self.priority_levels < 1:
            found.append(f"priority_levels must be >= 1, got {self.priority_levels}")
        elif not 1 <= self.default_priority <= self.priority_levels:
            found.append(
                f"default_priority must lie in 1..{self.priority_levels}, got {self.default_priority}"
            )
        if self.instances < 1:
            found.append(f"instances must be >= 1, got {self.instances}")
        return found


# --- the serving settings: declared once, read by one function ------------------------------

OPTION_SCHEMA: dict[str, schema.Check] = {
    "threads": schema.integer(minimum=1),  # leave it out for the runtime's default
    "graph_optimization_level": schema.text(),
    "performance_hint": schema.text(),
    "streams": schema.integer(minimum=1),
    "extra": schema.scalar_table,  # passed through to the runtime as text
}
"""SessionOptions keys (precision is the deployment's, not an option)."""

BATCHING_SCHEMA: dict[str, schema.Check] = {
    "max_batch_size": schema.integer(minimum=0),
    "max_queue_delay_us": schema.integer(minimum=0),
    "preferred_batch_sizes": schema.integer_list(minimum=1),
    "max_queue_size": schema.integer(minimum=0),
    "instances": schema.integer(minimum=1),
    "default_timeout_us": schema.integer(minimum=0),
    "priority_levels": schema.integer(minimum=1),
    "default_priority": schema.integer(minimum=1),
}
"""BatchingSpec keys, each one of its fields."""

SERVING_KEYS: tuple[str, ...] = (*OPTION_SCHEMA, *BATCHING_SCHEMA)

_WRITTEN_WHEN_SET = ("default_timeout_us", "priority_levels", "default_priority")


@dataclass(frozen=True, kw_only=True)
class ServingSettings:
    """What `read_serving_settings` read: the session options, the batching, and other keys."""

    options: SessionOptions
    batching: BatchingSpec
    other: Mapping[str, Any] = field(default_factory=dict)


def read_serving_settings(
    raw: Any,
    *,
    options: SessionOptions,
    batching: BatchingSpec,
    where: str,
    table: str = "",
    keys: Iterable[str] = SERVING_KEYS,
    other: Mapping[str, Key | schema.Check] | None = None,
    error: type[CrossinferError],
) -> ServingSettings:
    """`options` and `batching` with the serving settings of `raw` laid over them.

    The one reader of the serving settings, for a spec's tables and for serve's config.toml and
    command line alike. `keys` are the serving keys this table may hold; `other` declares the
    table's further keys (read and returned in ``other``). Raises `error` naming `where`, the
    table and the key: an undeclared key (with the nearest declared one), a wrong value, or
    batching settings that contradict each other.
    """
    serving = {key: {**OPTION_SCHEMA, **BATCHING_SCHEMA}[key] for key in keys}
    declared: dict[str, Key | schema.Check] = {**serving, **(other or {})}
    values = schema.read_table(raw, declared, where=where, table=table, flat=True, error=error)
    option_values = {k: v for k, v in values.items() if k in OPTION_SCHEMA and k in serving}
    batching_values = {k: v for k, v in values.items() if k in BATCHING_SCHEMA and k in serving}
    try:
        batching = dataclasses.replace(batching, **batching_values)
    except ValueError as exc:
        place = f"[{table}] " if table else ""
        raise error(f"{where}: {place}{exc}") from None
    return ServingSettings(
        options=dataclasses.replace(options, **option_values),
        batching=batching,
        other={k: v for k, v in values.items() if k not in serving},
    )


# --- the scale-out settings: `crossinfer serve --ray` --------------------------------------

SCALE_SCHEMA: dict[str, schema.Check] = {
    "replicas": schema.integer(minimum=1),
    "min_replicas": schema.integer(minimum=0),
    "max_replicas": schema.integer(minimum=1),
    "target_ongoing_requests": schema.number(positive=True),
    "num_cpus": schema.number(),
    "num_gpus": schema.number(),
    "max_ongoing_requests": schema.integer(minimum=1),
}
"""ScaleSpec keys: a spec's ``[scale]`` table, a config.toml's ``[scale]`` and ``serve --scale``."""

_AUTOSCALING_KEYS = ("min_replicas", "max_replicas", "target_ongoing_requests")


@dataclass(frozen=True, kw_only=True)
class ScaleSpec:
    """How many replicas serve one model under Ray Serve, and what each one reserves.

    Either a fixed ``replicas`` count or autoscaling between ``min_replicas`` and
    ``max_replicas`` (Ray Serve keeps about ``target_ongoing_requests`` in flight per replica),
    never both. ``num_cpus``/``num_gpus`` are Ray resources per replica; a GPU fraction below 1
    lets replicas share one GPU. ``max_ongoing_requests`` None: enough for the batcher to fill
    its batches (`effective_max_ongoing`). Raises ValueError listing every problem.
    """

    replicas: int | None = None  # None: 1, unless autoscaling
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    def problems(self) -> list[str]:
        found = []
        if self.replicas is not None and self.autoscaling:
            found.append(
                "give either replicas (a fixed count) or min_replicas/max_replicas "
                "(autoscaling), not both"
            )
        if self.min_replicas is not None and self.max_replicas is None:
            found.append("autoscaling needs max_replicas (min_replicas alone sets no bound)")
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and self.min_replicas > self.max_replicas
        ):
            found.append(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        if self.target_ongoing_requests is not None and not self.autoscaling:
            found.append("target_ongoing_requests applies to autoscaling: set max_replicas too")
        if self.num_cpus < 0:
            found.append(f"num_cpus must be >= 0, got {self.num_cpus:g}")
        if self.num_gpus < 0:
            found.append(f"num_gpus must be >= 0, got {self.num_gpus:g}")
        elif self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            # Ray's rule: a replica takes a fraction of one GPU or whole GPUs
            found.append(
                f"num_gpus {self.num_gpus:g}: a fraction must be below 1 (several replicas share "
                "one GPU); above 1 it must be a whole number"
            )
        return found

    def overlaid(self, values: Mapping[str, Any]) -> ScaleSpec:
        """This spec with `values` (checked SCALE_SCHEMA keys) laid over it.

        A fixed count and autoscaling replace each other: ``replicas`` over an autoscaling spec
        turns autoscaling off, ``max_replicas`` over a fixed count turns it on.
        """
        changes = dict(values)
        if "replicas" in changes:
            changes.update({k: None for k in _AUTOSCALING_KEYS if k not in changes})
        elif any(k in changes for k in _AUTOSCALING_KEYS):
            changes.setdefault("replicas", None)
        return dataclasses.replace(self, **changes)

    def effective_max_ongoing(self, batching: BatchingSpec) -> int:
        """Requests Ray Serve may hand one replica at once: enough to fill every instance's batch."""
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        batch = max(1, batching.max_batch_size or 1)
        return max(8, 2 * batch * batching.instances)

    @classmethod
    def suggested(cls, *, device: str, options: SessionOptions, instances: int) -> ScaleSpec:
        """What `tune` writes: one replica reserving the cores (or the GPU) it was measured on."""
        cpus = float((options.threads or 1) * instances)
        return cls(replicas=1, num_cpus=cpus, num_gpus=0.0 if device == "cpu" else 1.0)

    def to_toml(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def read_scale(
    raw: Any,
    *,
    where: str,
    table: str = "scale",
    base: ScaleSpec | None = None,
    error: type[CrossinferError],
) -> ScaleSpec:
    """`base` (the defaults) with a ``[scale]`` table laid over it; `error` names every problem."""
    values = schema.read_table(raw, SCALE_SCHEMA, where=where, table=table, error=error)
    try:
        return (base or ScaleSpec()).overlaid(values)
    except ValueError as exc:
        place = f"[{table}] " if table else ""
        raise error(f"{where}: {place}{exc}") from None


# --- the deployment spec --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
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
    scale: ScaleSpec | None = None  # `serve --ray`; None: one replica, 1 CPU

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
    options = {
        key: dict(value) if key == "extra" else value
        for key in OPTION_SCHEMA
        if (value := getattr(spec.options, key)) is not None and value != {}
    }
    if options:
        deployment["options"] = options
    if spec.batching.max_batch_size is None:
        raise SpecError(
            f"deployment spec {path}: batching.max_batch_size None (serve decides) cannot be "
            "written: a spec records what was chosen, 0 (no batching) or a batch size"
        )
    batching = dataclasses.asdict(spec.batching)
    batching["preferred_batch_sizes"] = list(spec.batching.preferred_batch_sizes)
    for key in _WRITTEN_WHEN_SET:  # what tune chooses is always written; these when set
        if batching[key] == getattr(BatchingSpec(), key):
            del batching[key]
    deployment["batching"] = batching
    document: dict[str, Any] = {"spec_version": SPEC_VERSION, "deployment": deployment}
    if spec.measured:
        document["measured"] = _toml_safe(spec.measured)
    if spec.source:
        document["source"] = _toml_safe(spec.source)
    if spec.scale is not None:
        document["scale"] = spec.scale.to_toml()
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


_PRECISIONS = tuple(p.value for p in Precision)

_DOCUMENT: dict[str, Key | schema.Check] = {
    "spec_version": schema.integer(minimum=1),
    "deployment": Key(schema.table, required=True),
    "measured": schema.table,  # free-form: what tune saw
    "source": schema.table,  # free-form: how it was chosen
    "scale": schema.table,  # read_scale with SCALE_SCHEMA
}

_DEPLOYMENT: dict[str, Key | schema.Check] = {
    "name": Key(schema.text(), required=True),
    "model": Key(schema.text(), required=True),
    "model_sha256": schema.text(),
    "recipe": schema.text(),
    "backend": Key(schema.text(), required=True),
    "device": Key(schema.text(), required=True),
    "precision": schema.one_of(_PRECISIONS, lower=True),
    "options": schema.table,  # read_serving_settings with OPTION_SCHEMA
    "batching": schema.table,  # read_serving_settings with BATCHING_SCHEMA
}


def _from_document(document: dict[str, Any], path: Path, *, check_hash: bool) -> DeploymentSpec:
    where = f"deployment spec {path}"

    def fail(message: str) -> SpecError:
        return SpecError(f"{where}: {message}")

    version = document.get("spec_version", SPEC_VERSION)
    if not isinstance(version, int) or version > SPEC_VERSION:
        raise fail(
            f"spec_version {version!r} is newer than this crossinfer understands "
            f"({SPEC_VERSION}): upgrade crossinfer"
        )
    top = schema.read_table(document, _DOCUMENT, where=where, error=SpecError)
    deployment = schema.read_table(
        top["deployment"], _DEPLOYMENT, where=where, table="deployment", error=SpecError
    )
    name = deployment["name"]
    if not _NAME.match(name):
        raise fail(
            f"deployment.name {name!r} must be letters, digits, '_', '.' or '-' "
            "(it becomes part of the serving URL)"
        )
    model_text = deployment["model"]
    model = Path(model_text).expanduser()
    if not model.is_absolute():
        model = (path.parent / model).resolve()
    # a file (ONNX, .keras) or a TensorFlow SavedModel directory (load_model converts it)
    if not (model.is_file() or (model / "saved_model.pb").is_file()):
        raise fail(
            f"deployment.model {model_text!r} does not exist (looked for {model}); "
            "keep the model next to the spec or write its absolute path"
        )
    backend = deployment["backend"]
    try:
        backend_entry(backend)
    except UsageError as exc:
        raise fail(f"deployment.backend: {exc}") from None
    sha = deployment.get("model_sha256")
    if sha is not None and check_hash:
        try:
            artifact = load_model(model)  # its hash covers external data too
        except ModelError as exc:
            raise fail(f"deployment.model: {short_message(exc)}") from exc
        check_artefact_hash(path, artifact, sha)
    precision = Precision(deployment.get("precision", Precision.FP32.value))
    options = read_serving_settings(
        deployment.get("options", {}),
        options=SessionOptions(precision=precision),
        batching=BatchingSpec(),
        where=where,
        table="deployment.options",
        keys=OPTION_SCHEMA,
        error=SpecError,
    ).options
    batching = read_serving_settings(
        deployment.get("batching", {}),
        options=options,
        batching=BatchingSpec(),  # max_batch_size 0 when the spec leaves it out: no batching
        where=where,
        table="deployment.batching",
        keys=BATCHING_SCHEMA,
        error=SpecError,
    ).batching
    return DeploymentSpec(
        name=name,
        model=model,
        backend=backend,
        device=deployment["device"],
        options=options,
        batching=batching,
        model_sha256=sha,
        recipe=deployment.get("recipe"),
        measured=top.get("measured", {}),
        source=top.get("source", {}),
        scale=read_scale(top["scale"], where=where, error=SpecError) if "scale" in top else None,
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


def _toml_safe(value: Any) -> Any:
    """TOML has no null: drop None values, turn tuples into lists, keep the rest."""
    if isinstance(value, Mapping):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_toml_safe(v) for v in value if v is not None]
    if isinstance(value, Path):
        return str(value)
    return value
