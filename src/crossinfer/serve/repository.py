"""The model repository of `crossinfer serve`: which models exist, their state, and each one served.

`ModelRepository` finds models (a directory, or sources given directly), loads them off the event
loop, and answers `get(name, version)` with a ready `ServedModel` or the protocol error to send.
Both front ends (HTTP in `app`, gRPC in `grpc`) code against this module only.

A repository directory holds, per model, one of::

    NAME.toml             a deployment spec written by `crossinfer tune` (its model may sit next to it)
    NAME.onnx             a model served with the default settings (unless a spec names it)
    NAME/model.onnx       (or any single .onnx, or NAME/1/model.onnx as Triton lays it out)
    NAME/config.toml      optional: backend, device, precision, max_batch_size, ... (CONFIG_KEYS)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import threading
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossinfer import schema
from crossinfer.backends.base import (
    Precision,
    Session,
    SessionOptions,
    find_backend_entry,
    get_backend,
)
from crossinfer.errors import (
    BatcherStoppedError,
    InferenceError,
    InputError,
    ModelNotFoundError,
    ProtocolError,
    QueueFullError,
    QueueTimeoutError,
    UsageError,
    short_message,
)
from crossinfer.model import ModelArtifact, TensorSpec, load_model
from crossinfer.option_parsing import parse_batch_sizes, parse_knobs
from crossinfer.serve.batcher import DynamicBatcher
from crossinfer.serve.events import log_event
from crossinfer.serve.protocol import (
    InferRequest,
    datatype_of,
    model_metadata,
    numpy_dtype_of,
)
from crossinfer.spec import (
    SERVING_KEYS,
    BatchingSpec,
    check_artefact_hash,
    load_spec,
    read_serving_settings,
)
from crossinfer.tensor_specs import has_batch_dim

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_MAX_BATCH_SIZE",
    "DELAY_SCHEDULER_ENV",
    "LOADING",
    "MODEL_CONTROL_MODES",
    "READY",
    "UNAVAILABLE",
    "UNLOADING",
    "ModelRepository",
    "ModelSource",
    "ServedModel",
    "ServingConfig",
    "apply_config",
    "model_name_for",
    "open_repository",
    "serving_overrides",
]

MODEL_CONTROL_MODES = ("none", "explicit", "poll")
"""Triton's --model-control-mode: who may change the loaded models while the server runs.

none: nobody (every model is loaded at start); explicit: clients, through the repository
load/unload calls; poll: the server itself, rescanning the repository folder every
``poll_interval_s``. Clients may load and unload in explicit mode only, as in Triton."""

_CONTROL_REFUSED = "explicit model load / unload is not allowed if polling is enabled"
"""Triton's own words (answered UNAVAILABLE in every mode but explicit), so clients match them."""

DEFAULT_MAX_BATCH_SIZE = 8
"""max_batch_size for a model whose config does not say, when every tensor has a variable dim 0."""

DELAY_SCHEDULER_ENV = "CROSSINFER_DELAY_SCHEDULER"
"""Triton's TRITONSERVER_DELAY_SCHEDULER: hold each model's batcher until N requests are queued."""

MODEL_VERSION = "1"  # one version per model: a spec or a file is one artefact

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _platform(backend: str) -> str:
    """The KServe metadata platform: the backend's registry entry says it."""
    entry = find_backend_entry(backend)
    return entry.platform if entry is not None else f"{backend}_onnx"


# --- per-model settings --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServingConfig:
    """How one model is served: runtime, device, session options, batching.

    ``batching.max_batch_size`` None means: DEFAULT_MAX_BATCH_SIZE when every input and output
    has a variable first dim (the batch), else 0 (no batching).
    """

    backend: str = "onnxruntime"
    device: str = "cpu"
    options: SessionOptions = field(default_factory=SessionOptions)
    batching: BatchingSpec = field(default_factory=lambda: BatchingSpec(max_batch_size=None))
    spec_path: Path | None = None  # a deployment spec's file, when the model comes from one
    model_sha256: str | None = None  # the spec's hash, checked on the artefact once it is loaded


# config.toml's own keys; the serving settings are the spec's (one declaration, one reader)
_CONFIG_SCHEMA: dict[str, schema.Check] = {
    "backend": schema.text(),
    "device": schema.text(),
    "precision": schema.one_of([p.value for p in Precision], lower=True),
    "model": schema.text(),  # the file to serve, in the model's directory
    "scale": schema.table,  # [scale]: read by `serve --ray` (crossinfer.spec.read_scale)
}
CONFIG_KEYS: tuple[str, ...] = tuple(sorted({*_CONFIG_SCHEMA, *SERVING_KEYS}))
"""Keys of a model directory's config.toml (and of command-line overrides, except ``model``)."""


def apply_config(base: ServingConfig, raw: Mapping[str, Any], where: str) -> ServingConfig:
    """`base` with the keys of `raw` (a config.toml or command-line values) set; UsageError names `where`."""
    read = read_serving_settings(
        raw,
        options=base.options,
        batching=base.batching,
        where=where,
        other=_CONFIG_SCHEMA,
        error=UsageError,
    )
    changes: dict[str, Any] = {"options": read.options, "batching": read.batching}
    for key in ("backend", "device"):
        if key in read.other:
            changes[key] = read.other[key].lower()
    if "precision" in read.other:
        changes["options"] = dataclasses.replace(
            read.options, precision=Precision(read.other["precision"])
        )
    # "model" names the file; the caller reads it
    return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class ModelSource:
    """Where one model comes from: an .onnx path, ``zoo:NAME``, a deployment spec or a directory.

    ``overrides`` (CONFIG_KEYS) win over what the files say: they are the command line's.
    Files are read at every load, so an edited config takes effect on the next load.
    """

    location: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    root: Path | None = None  # a config.toml's model file must lie in it (None: anywhere)

    def resolve(self) -> tuple[str, ServingConfig]:
        """The model to load (path or zoo source) and its settings; raises CrossinferError."""
        where = f"model source {self.location}"
        if self.location.startswith("zoo:"):
            return self.location, apply_config(ServingConfig(), self.overrides, where)
        path = Path(self.location).expanduser()
        if path.is_dir():
            model, config = _read_model_dir(path, self.root)
        elif path.suffix == ".toml" and path.is_file():
            model, config = _read_spec(path)
        elif path.is_file():
            model, config = str(path), ServingConfig()
        elif not path.exists():
            raise ModelNotFoundError(
                f"{path} does not exist: give an .onnx model, zoo:NAME, a deployment spec "
                "(.toml) or a model repository directory"
            )
        else:
            raise UsageError(f"{path} is neither a file nor a directory")
        return model, apply_config(config, self.overrides, f"{where} (command line)")


def _read_model_dir(path: Path, root: Path | None) -> tuple[str, ServingConfig]:
    config_path = path / "config.toml"
    raw: dict[str, Any] = {}
    if config_path.is_file():
        try:
            raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{config_path}: not valid TOML: {exc}") from exc
    config = apply_config(ServingConfig(), raw, str(config_path))
    if "model" in raw:  # apply_config checked it is a file name
        model = path / raw["model"]
        if root is not None and not model.resolve().is_relative_to(root.resolve()):
            # an absolute path, "../..", or a link out: any file the server can read would
            # become loadable by name from a folder dropped into the repository
            raise UsageError(
                f"{config_path}: model {raw['model']!r} lies outside the repository {root}: "
                "put the file in the model's folder, or start crossinfer serve with "
                "--allow-outside-model-paths"
            )
        if not model.is_file():
            raise ModelNotFoundError(f"{config_path}: model {raw['model']!r} is not in {path}")
        return str(model), config
    found = sorted(path.glob("*.onnx")) or sorted(
        p for p in path.glob("*/*.onnx") if p.parent.name.isdigit()
    )
    if not found:
        raise ModelNotFoundError(
            f"model directory {path} holds no .onnx file: put model.onnx in it"
        )
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(path)) for p in found)
        raise UsageError(
            f"model directory {path} holds {len(found)} .onnx files ({names}): name the one "
            'to serve with model = "..." in its config.toml'
        )
    return str(found[0]), config


def _read_spec(path: Path) -> tuple[str, ServingConfig]:
    spec = load_spec(path, check_hash=False)  # _build checks the hash on its own load
    return str(spec.model), ServingConfig(
        backend=spec.backend,
        device=spec.device,
        options=spec.options,
        batching=spec.batching,
        spec_path=path,
        model_sha256=spec.model_sha256,
    )


def model_name_for(location: str) -> str:
    """The name a model source is served under: ``zoo:mlp`` -> mlp, ``a/resnet.onnx`` -> resnet.

    A deployment spec is served under the name it holds.
    """
    if location.startswith("zoo:"):
        from crossinfer.zoo import parse_zoo_spec

        return parse_zoo_spec(location).name
    path = Path(location).expanduser()
    if path.suffix == ".toml" and path.is_file():
        return load_spec(path, check_hash=False).name
    return path.stem if path.suffix in (".onnx", ".toml") else path.name


# --- one served model -----------------------------------------------------------------------


class ServedModel:
    """One loaded model behind its dynamic batcher, answering in the protocol's terms."""

    def __init__(
        self,
        name: str,
        artifact: ModelArtifact,
        config: ServingConfig,
        *,
        version: str = MODEL_VERSION,
    ) -> None:
        self.name = name
        self.version = version
        self.artifact = artifact
        self.serving = config
        self.inputs: tuple[TensorSpec, ...] = artifact.inputs
        self.outputs: tuple[TensorSpec, ...] = artifact.outputs
        self.platform = _platform(config.backend)
        self.max_batch_size = _max_batch_size(artifact, config)
        # what metadata promises; a runtime answering another type (OpenVINO gives FP16 for
        # BF16) is converted so clients get the declared datatype
        self._output_dtypes = {
            spec.name: numpy_dtype_of(datatype_of(spec.dtype))
            for spec in self.outputs
            if spec.dtype not in ("object", "str", "bytes")
        }
        self._sessions: list[Session] = []
        self._sessions_lock = threading.Lock()
        self._ready = False
        try:
            # max_batch_size settled: the batcher gets no None
            batching = dataclasses.replace(config.batching, max_batch_size=self.max_batch_size)
        except ValueError as exc:
            raise UsageError(f"model '{name}': {exc}") from None
        self.batching = batching
        self.batcher = DynamicBatcher(self._new_session, batching, model_name=name)

    def _new_session(self) -> Session:
        # runs in the batcher's worker threads, once per instance
        backend = get_backend(self.serving.backend)
        session = backend.prepare(self.artifact, self.serving.device, self.serving.options)
        with self._sessions_lock:
            self._sessions.append(session)
        return session

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        """Prepare `instances` sessions (in worker threads) and start batching."""
        try:
            await self.batcher.start()
        except BaseException:
            await self.batcher.stop(drain=False)
            self._close_sessions()
            raise
        self._ready = True
        hold = os.environ.get(DELAY_SCHEDULER_ENV)
        if hold and hold.isdigit() and int(hold) > 0:
            self.batcher.hold_until(int(hold))

    async def stop(self, drain: bool = True) -> None:
        """Refuse new requests, finish (drain) or fail the queued ones, then free the sessions."""
        self._ready = False
        await self.batcher.stop(drain=drain)
        self._close_sessions()

    def _close_sessions(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def describe(self) -> dict[str, Any]:
        """What runs this model (for logs): runtime, providers, ignored options, batching."""
        with self._sessions_lock:
            first = self._sessions[0].describe() if self._sessions else {}
        return {
            "runtime": first.get("runtime", ""),
            "target": f"{self.serving.backend}:{self.serving.device}",
            "instances": self.batcher.instances,
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_us": self.batching.max_queue_delay_us,
            "session": first,  # what the backend says ran: providers, precision, ignored options
        }

    # --- protocol answers -------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return model_metadata(self.name, [self.version], self.platform, self.inputs, self.outputs)

    def config(self) -> dict[str, Any]:
        """Triton's ModelConfig as JSON (what perf_analyzer reads before it sends load)."""
        batching = self.max_batch_size > 0
        serving = self.serving
        doc: dict[str, Any] = {
            "name": self.name,
            "platform": self.platform,
            "backend": serving.backend,
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": self.max_batch_size,
            "input": [_config_tensor(s, batching, is_input=True) for s in self.inputs],
            "output": [_config_tensor(s, batching, is_input=False) for s in self.outputs],
            "instance_group": [
                {
                    "name": f"{self.name}_0",
                    "kind": "KIND_CPU" if serving.device == "cpu" else "KIND_GPU",
                    "count": self.batcher.instances,
                }
            ],
            "default_model_filename": self.artifact.path.name,
            "model_transaction_policy": {"decoupled": False},
            "parameters": {},
        }
        if batching:
            doc["dynamic_batching"] = {
                "preferred_batch_size": list(self.batching.preferred_batch_sizes),
                "max_queue_delay_microseconds": self.batching.max_queue_delay_us,
                "preserve_ordering": False,
                "priority_levels": self.batching.priority_levels,
                "default_priority_level": self.batching.default_priority,
                "default_queue_policy": {
                    "timeout_action": "REJECT",
                    "default_timeout_microseconds": self.batching.default_timeout_us,
                    "allow_timeout_override": True,
                    "max_queue_size": self.batching.max_queue_size,
                },
            }
        return doc

    def statistics(self) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` (exactly its fields)."""
        stats = self.batcher.stats().to_dict()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": stats["last_inference"],
            "inference_count": stats["inference_count"],
            "execution_count": stats["execution_count"],
            "inference_stats": stats["inference_stats"],
            "batch_stats": stats["batch_stats"],
        }

    def record_rejected(self, ns: int) -> None:
        """Count a request the front end refused (malformed, wrong input) as a failure."""
        self.batcher.record_failure(ns, "REJECTED")

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        """Run one parsed request through the batcher; the outputs asked for, in that order.

        Every failure is a ProtocolError: 400 for the request's fault, 503 when the model cannot
        take it now (queue full, timeout in the queue, unloading), 500 when the runtime failed.
        """
        try:
            outputs = await self.batcher.infer(
                request.inputs,
                priority=request.priority or None,
                timeout_us=request.timeout_us or None,
            )
        except QueueFullError:
            raise ProtocolError(
                503,
                f"Exceeds maximum queue size: model '{self.name}' already has "
                f"{self.batching.max_queue_size} requests queued (max_queue_size); retry later",
            ) from None
        except QueueTimeoutError as exc:
            raise ProtocolError(503, f"Request timeout expired: {exc}") from None
        except BatcherStoppedError as exc:
            raise ProtocolError(503, str(exc)) from None
        except InputError as exc:
            raise ProtocolError(400, str(exc)) from None
        except InferenceError as exc:
            raise ProtocolError(500, str(exc)) from exc
        for name, array in outputs.items():
            want = self._output_dtypes.get(name)
            if want is not None and array.dtype != want:
                outputs[name] = array.astype(want)
        if not request.requested_outputs:
            return outputs
        chosen = {}
        for name in request.requested_outputs:
            if name not in outputs:
                raise ProtocolError(
                    400,
                    f"requested output '{name}' is not an output of model '{self.name}': its "
                    f"outputs are {', '.join(repr(n) for n in outputs)}",
                )
            chosen[name] = outputs[name]
        return chosen


def _max_batch_size(artifact: ModelArtifact, config: ServingConfig) -> int:
    unbatchable = [
        spec for spec in (*artifact.inputs, *artifact.outputs) if not has_batch_dim(spec)
    ]
    wanted = config.batching.max_batch_size
    if wanted is None:
        return 0 if unbatchable else DEFAULT_MAX_BATCH_SIZE
    if wanted > 0 and unbatchable:
        spec = unbatchable[0]
        raise UsageError(
            f"max_batch_size {wanted} batches along dim 0, but tensor "
            f"'{spec.name}' has shape {spec.shape_str()} without a variable first dim: "
            "set max_batch_size = 0, or export the model with a dynamic batch dim"
        )
    return wanted


def _config_tensor(spec: TensorSpec, batching: bool, *, is_input: bool) -> dict[str, Any]:
    datatype = datatype_of(spec.dtype)
    dims = [-1] if spec.shape is None else [d if isinstance(d, int) else -1 for d in spec.shape]
    if batching:
        dims = dims[1:]
    doc: dict[str, Any] = {
        "name": spec.name,
        "data_type": "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}",
        "dims": dims,
    }
    if is_input:
        doc.update(format="FORMAT_NONE", is_shape_tensor=False, optional=False)
    else:
        doc.update(label_filename="", is_shape_tensor=False)
    return doc


# --- the repository -------------------------------------------------------------------------


@dataclass
class _Entry:
    state: str = UNAVAILABLE
    reason: str = "not loaded"
    model: ServedModel | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelRepository:
    """The models a server knows: a directory's entries plus `models` given directly.

    `start()` loads every model; one that fails is listed UNAVAILABLE with its reason while the
    others serve. `load`/`unload` serve the repository endpoints (Triton's explicit mode).
    """

    def __init__(
        self,
        path: Path | None,
        *,
        models: Mapping[str, ModelSource] | None = None,
        overrides: Mapping[str, Any] | None = None,
        control_mode: str = "none",
        poll_interval_s: float = 15.0,
        confine_model_paths: bool = True,
    ) -> None:
        if path is not None and not path.is_dir():
            raise ModelNotFoundError(f"model repository {path} is not a directory")
        if control_mode not in MODEL_CONTROL_MODES:
            raise UsageError(
                f"model control mode {control_mode!r} is not one of {', '.join(MODEL_CONTROL_MODES)}"
            )
        if not poll_interval_s > 0:
            raise UsageError(f"the repository poll interval must be > 0 s, got {poll_interval_s}")
        self.path = path
        self.control_mode = control_mode
        self.poll_interval_s = poll_interval_s
        self._root = path if confine_model_paths else None
        self._given = dict(models or {})
        self._overrides = dict(overrides or {})
        self._entries: dict[str, _Entry] = {}
        self._stopping = False
        self._fingerprints: dict[str, tuple[Any, ...]] = {}  # poll mode: what was loaded

    # --- what exists ------------------------------------------------------------------------

    def sources(self) -> dict[str, ModelSource | str]:
        """Every model name -> its source, or the reason it cannot be one (a name clash)."""
        found: dict[str, ModelSource | str] = {}
        if self.path is not None:
            artefacts = _spec_artefacts(self.path)
            for entry in sorted(self.path.iterdir()):
                if entry.name.startswith((".", "_")):
                    continue
                if entry.is_dir():
                    name = entry.name
                elif entry.suffix == ".toml" or (
                    entry.suffix == ".onnx" and entry.resolve() not in artefacts
                ):
                    name = entry.stem
                else:
                    continue  # a spec's own model file, data files, READMEs: not models
                if not _NAME.match(name):
                    log_event(
                        "model_skipped",
                        logging.WARNING,
                        path=str(entry),
                        reason="a model name is letters, digits, '_', '.' or '-'",
                    )
                    continue
                if name in found:
                    found[name] = (
                        f"two entries in {self.path} are named '{name}' "
                        f"({_location(found[name])} and {entry}): keep one"
                    )
                else:
                    found[name] = ModelSource(str(entry), self._overrides, self._root)
        found.update(self._given)
        return found

    def index(self, *, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: name, version, state, reason for every model."""
        names = sorted(set(self.sources()) | set(self._entries))
        rows = []
        for name in names:
            entry = self._entries.get(name) or _Entry()
            if ready_only and entry.state != READY:
                continue
            rows.append(
                {
                    "name": name,
                    "version": MODEL_VERSION,
                    "state": entry.state,
                    "reason": "" if entry.state == READY else entry.reason,
                }
            )
        return rows

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The ready model, or ProtocolError 404 (unknown model or version) / 503 (not ready)."""
        entry = self._entries.get(name)
        if entry is None or entry.model is None or entry.state != READY:
            if entry is None and name not in self.sources():
                known = ", ".join(repr(n) for n in sorted(self.sources())) or "none"
                raise ProtocolError(404, f"unknown model '{name}': this server has {known}")
            reason = entry.reason if entry is not None else "not loaded"
            state = entry.state.lower() if entry is not None else "unavailable"
            raise ProtocolError(503, f"model '{name}' is not ready ({state}): {reason}")
        if version not in (None, "", entry.model.version):
            raise ProtocolError(
                404,
                f"model '{name}' has no version '{version}': it serves version "
                f"{entry.model.version}",
            )
        return entry.model

    def ready_models(self) -> list[ServedModel]:
        return [e.model for _, e in sorted(self._entries.items()) if e.model and e.state == READY]

    # --- who may change what is loaded ----------------------------------------------------------

    def check_client_control(self, action: str, name: str) -> None:
        """Raise ProtocolError 503 (Triton's UNAVAILABLE, in its words) unless clients may
        load and unload models: ``--model-control-mode explicit``."""
        if self.control_mode != "explicit":
            raise ProtocolError(
                503,
                f"{_CONTROL_REFUSED} (cannot {action} model '{name[:200]}': crossinfer serve "
                f"runs with --model-control-mode {self.control_mode}; start it with "
                "--model-control-mode explicit to let clients load and unload models)",
            )

    async def poll_forever(self) -> None:
        """Poll mode: every `poll_interval_s`, load new models, reload changed ones, unload
        the removed ones (Triton's --model-control-mode poll). Runs until cancelled."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            await self.poll_once()

    async def poll_once(self) -> None:
        """One rescan of the repository folder (poll mode's step; a failed load is logged)."""
        if self._stopping:
            return
        sources = await asyncio.to_thread(self.sources)
        prints = await asyncio.to_thread(_fingerprints, sources)
        for name in sorted(set(self._entries) - set(sources)):
            log_event("model_removed", model=name)
            with contextlib.suppress(ProtocolError):
                await self.unload(name)
            self._entries.pop(name, None)
            self._fingerprints.pop(name, None)
        for name, print_ in sorted(prints.items()):
            entry = self._entries.get(name)
            if entry is not None and self._fingerprints.get(name) == print_:
                continue
            if entry is not None and entry.state in (LOADING, UNLOADING):
                continue  # a load or unload is under way: the next round looks again
            with contextlib.suppress(ProtocolError):  # recorded in the index and the log
                await self.load(name)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model, one after another; failures are recorded, never raised."""
        for name in self.sources():
            # a failure is recorded in the index with its reason and logged by load()
            with contextlib.suppress(ProtocolError):
                await self.load(name)

    async def stop(self, *, drain: bool = True) -> None:
        """Unload every model, finishing (draining) each one's accepted requests, or with
        ``drain=False`` failing the queued ones (a shutdown whose drain timed out)."""
        self._stopping = True
        await asyncio.gather(*(self.unload(name, drain=drain) for name in list(self._entries)))

    async def load(self, name: str) -> ServedModel:
        """(Re)load `name` from its source; ProtocolError 404 if unknown, 400 if it fails.

        A reload swaps the new model in before draining the old one; if the new one fails, the
        old one keeps serving.
        """
        if self._stopping:
            raise ProtocolError(503, f"cannot load model '{name}': the server is shutting down")
        source = self.sources().get(name)
        if source is None:
            known = ", ".join(repr(n) for n in sorted(self.sources())) or "none"
            raise ProtocolError(404, f"no model '{name[:200]}' in the repository: it has {known}")
        if self.control_mode == "poll":
            self._fingerprints[name] = _fingerprints({name: source}).get(name, ())
        entry = self._entries.setdefault(name, _Entry())
        async with entry.lock:
            old = entry.model if entry.state == READY else None
            if old is None:
                entry.state, entry.reason = LOADING, "loading"
            log_event("model_loading", model=name, source=_location(source))
            try:
                if isinstance(source, str):
                    raise UsageError(source)
                model = await _build(name, source)
                await model.start()
            except Exception as exc:  # any failure is this model's state, never the server's
                reason = short_message(exc)
                log_event("model_load_failed", logging.ERROR, model=name, reason=reason)
                if old is None:
                    entry.state, entry.reason, entry.model = UNAVAILABLE, reason, None
                raise ProtocolError(400, f"failed to load model '{name}': {reason}") from exc
            entry.state, entry.reason, entry.model = READY, "", model
            log_event("model_ready", model=name, **model.describe())
        if old is not None:
            await old.stop(drain=True)
        return model

    async def unload(self, name: str, *, drain: bool = True) -> None:
        """Stop serving `name` after finishing its accepted requests; 404 if unknown."""
        entry = self._entries.get(name)
        if entry is None:
            if name in self.sources():
                return  # known but never loaded: already unloaded
            raise ProtocolError(404, f"no model '{name}' in the repository")
        async with entry.lock:
            model = entry.model
            if model is None:
                return
            entry.state, entry.reason = UNLOADING, "unloading: finishing accepted requests"
            await model.stop(drain=drain)
            entry.state, entry.reason, entry.model = UNAVAILABLE, "unloaded", None
            log_event("model_unloaded", model=name)


async def _build(name: str, source: ModelSource) -> ServedModel:
    """Read the source and the model off the event loop (ONNX checking can take seconds)."""

    def build() -> ServedModel:
        model, config = source.resolve()
        artifact = load_model(model)
        if config.spec_path is not None and config.model_sha256 is not None:
            check_artefact_hash(config.spec_path, artifact, config.model_sha256)
        return ServedModel(name, artifact, config)

    return await asyncio.to_thread(build)


def _fingerprints(sources: Mapping[str, ModelSource | str]) -> dict[str, tuple[Any, ...]]:
    """Each source's files' (path, size, mtime): a change means a reload in poll mode."""
    out: dict[str, tuple[Any, ...]] = {}
    for name, source in sources.items():
        location = _location(source)
        path = Path(location)
        if location.startswith("zoo:") or isinstance(source, str):
            out[name] = (location,)
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        stats = []
        for file in files[:1000]:  # bounded: a model folder is a few files
            with contextlib.suppress(OSError):
                st = file.stat()
                stats.append((str(file), st.st_size, st.st_mtime_ns))
        out[name] = tuple(stats)
    return out


def _spec_artefacts(folder: Path) -> set[Path]:
    """The model files the deployment specs in `folder` name: served through their spec only."""
    found = set()
    for spec in folder.glob("*.toml"):
        try:
            model = tomllib.loads(spec.read_text(encoding="utf-8"))["deployment"]["model"]
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
            continue  # a broken spec is listed with its reason when it is loaded
        if isinstance(model, str):
            found.add((folder / Path(model).expanduser()).resolve())
    return found


def _location(source: ModelSource | str) -> str:
    return source.location if isinstance(source, ModelSource) else source


def serving_overrides(
    *,
    backend: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    max_batch_size: int | None = None,
    max_queue_delay_us: int | None = None,
    preferred_batch_sizes: str | None = None,
    max_queue_size: int | None = None,
    instances: int | None = None,
    threads: int | None = None,
    options: Sequence[str] = (),
) -> dict[str, Any]:
    """The config.toml keys `crossinfer serve`'s options set for every model; None: not given.

    `backend` may be BACKEND:DEVICE; `preferred_batch_sizes` is a comma list ("4,8"); `options`
    are backend knobs as KEY=VALUE (the backend checks the keys when it prepares).
    """
    overrides: dict[str, Any] = {}
    if backend is not None:
        target_backend, _, target_device = backend.partition(":")
        overrides["backend"] = target_backend
        if target_device:
            overrides["device"] = target_device
    given = {
        "device": device,
        "precision": precision,
        "max_batch_size": max_batch_size,
        "max_queue_delay_us": max_queue_delay_us,
        "max_queue_size": max_queue_size,
        "instances": instances,
        "threads": threads,
    }
    overrides.update({k: v for k, v in given.items() if v is not None})
    if options:
        overrides["extra"] = parse_knobs(options)
    if preferred_batch_sizes:
        try:
            overrides["preferred_batch_sizes"] = list(parse_batch_sizes(preferred_batch_sizes))
        except UsageError:
            raise UsageError(
                f"--preferred-batch-sizes '{preferred_batch_sizes}' is not a comma list of "
                "positive integers, e.g. 4,8"
            ) from None
    return overrides


def open_repository(
    target: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
    control_mode: str = "none",
    poll_interval_s: float = 15.0,
    confine_model_paths: bool = True,
) -> ModelRepository:
    """The repository for what the command line names: a directory, a spec, an .onnx or zoo:NAME.

    `name` renames a single model (not allowed for a directory, whose entries name themselves).
    `control_mode`, `poll_interval_s`, `confine_model_paths`: as `ModelRepository` takes them
    (a single model's folder confines its own config.toml's model path).
    """
    overrides = dict(overrides or {})
    path = Path(target).expanduser()
    control: dict[str, Any] = {
        "control_mode": control_mode,
        "poll_interval_s": poll_interval_s,
        "confine_model_paths": confine_model_paths,
    }
    if not target.startswith("zoo:") and path.is_dir() and not _is_model_dir(path):
        if name is not None:
            raise UsageError(f"--name names one model; {path} is a repository of models")
        return ModelRepository(path, overrides=overrides, **control)
    if not target.startswith("zoo:") and not path.exists():
        raise ModelNotFoundError(
            f"{target} does not exist: give an .onnx model, zoo:NAME, a deployment spec (.toml) "
            "or a model repository directory"
        )
    served_name = name or model_name_for(target)
    if not _NAME.match(served_name):
        raise UsageError(
            f"model name {served_name!r} must be letters, digits, '_', '.' or '-' (it is part "
            "of the URL): choose one with --name"
        )
    root = path if confine_model_paths and path.is_dir() else None
    return ModelRepository(
        None, models={served_name: ModelSource(target, overrides, root)}, **control
    )


def _is_model_dir(path: Path) -> bool:
    """A directory that is one model (holds .onnx or config.toml), not a repository of them."""
    return (path / "config.toml").is_file() or any(path.glob("*.onnx"))
