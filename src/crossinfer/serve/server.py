"""`crossinfer serve` as one process: HTTP, gRPC and metrics front ends over one model repository.

`InferenceServer` loads the models, opens the listeners, and on stop (SIGTERM/SIGINT) stops
accepting, lets every accepted request finish, drains the batchers, then closes. `run_server`
is the command line's blocking entry point; `BackgroundServer` runs one in a thread (tests,
benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvicorn
import uvloop

from crossinfer.serve.app import DEFAULT_MAX_BODY_BYTES, HttpApp
from crossinfer.serve.events import LOGGER_NAME, JsonFormatter, log_event
from crossinfer.serve.http_protocol import HttpLimits, guarded_protocol
from crossinfer.serve.metrics import CONTENT_TYPE, ServerMetrics
from crossinfer.serve.repository import READY, ModelRepository
from crossinfer.serve.shm import SharedMemoryRegistry

__all__ = [
    "ABORT_GRACE_S",
    "DRAIN_TIMEOUT_EXIT_CODE",
    "GRPC_ENGINES",
    "BackgroundServer",
    "InferenceServer",
    "ServerConfig",
    "configure_logging",
    "run_server",
]

T = TypeVar("T")

ABORT_GRACE_S = 2.0
"""After the drain timeout: how long the front ends get to send their 503 / UNAVAILABLE answers
(and then, separately, to close) before the server closes them without a goodbye."""

GRPC_ENGINES = ("core", "aio")
"""How the gRPC front end runs: on grpc's C core driven from one poll thread (`grpc_core`), or
on grpc.aio's server."""

DRAIN_TIMEOUT_EXIT_CODE = 3
"""`crossinfer serve`'s exit status when requests were cut off by --drain-timeout."""


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and how long to wait. A port of 0 picks a free one; None turns it off."""

    host: str = "127.0.0.1"
    http_port: int | None = 8000
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_timeout_s: float = 30.0  # Triton's --exit-timeout-secs default
    stats_log_interval_s: float = 10.0  # batch-size summaries in the log while traffic flows
    backlog: int = 2048
    grpc_engine: str = "core"  # "core" (grpc's C core, one poll thread) or "aio" (grpc.aio)
    http_limits: HttpLimits = field(
        default_factory=HttpLimits
    )  # header/body timeouts and the header size limit


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the InferenceServer orders the shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class InferenceServer:
    """The front ends over one repository, started and stopped together, in one event loop."""

    def __init__(self, repository: ModelRepository, config: ServerConfig | None = None) -> None:
        self.repository = repository
        self.config = config or ServerConfig()
        # one namespace of shared memory regions for both front ends, as Triton has it
        self.shared_memory = SharedMemoryRegistry()
        self.app = HttpApp(
            repository,
            max_body_bytes=self.config.max_body_bytes,
            shared_memory=self.shared_memory,
        )
        self.metrics: ServerMetrics | None = None
        self.ports: dict[str, int] = {}  # "http", "grpc", "metrics" -> the bound port
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._metrics_http: _Uvicorn | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: Any = None
        self._stopped = asyncio.Event()
        self._stop_requested: asyncio.Event | None = None
        self.drain_timed_out = False  # set when stop() had to cut requests off

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model, then open HTTP, gRPC and metrics; ready once all are listening."""
        self._stop_requested = asyncio.Event()
        try:
            await self._start()
        except BaseException:
            await self.stop()  # whatever did start (a listener, loaded models) is closed again
            raise

    async def _start(self) -> None:
        config = self.config
        await self.repository.start()
        if config.http_port is not None:
            self._http = await self._start_uvicorn(self.app, config.http_port, "http")
            self._http_task = self._tasks[-1]
        if config.grpc_port is not None:
            await self._start_grpc(config.grpc_port)
        if config.metrics_port is not None:
            self.metrics = ServerMetrics(self.repository.ready_models)
            app = _metrics_app(self.metrics)
            self._metrics_http = await self._start_uvicorn(app, config.metrics_port, "metrics")
            self._metrics_task = self._tasks[-1]
        self._tasks.append(asyncio.get_running_loop().create_task(self._log_batches()))
        if self.repository.control_mode == "poll":
            self._tasks.append(
                asyncio.get_running_loop().create_task(self.repository.poll_forever())
            )
        self.app.ready = True
        log_event(
            "server_ready",
            host=config.host,
            ports=self.ports,
            models={row["name"]: row["state"] for row in self.repository.index()},
        )

    async def _start_uvicorn(self, app: Any, port: int, what: str) -> _Uvicorn:
        sock = _listen(self.config.host, port, self.config.backlog, what)
        self.ports[what] = sock.getsockname()[1]
        server = _Uvicorn(
            uvicorn.Config(
                app,
                http=guarded_protocol(self.config.http_limits),
                ws="none",  # not part of the protocol
                lifespan="off",
                access_log=False,
                proxy_headers=False,  # no proxy in front by default: skip the middleware
                server_header=False,
                date_header=False,
                log_config=None,
                log_level="warning",
                # outlasts our own deadline, so that stop() answers the requests still running
                # (uvicorn would cancel them into a plain-text 500)
                timeout_graceful_shutdown=math.ceil(
                    self.config.drain_timeout_s + 3 * ABORT_GRACE_S
                ),
                backlog=self.config.backlog,
            )
        )
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        self._tasks.append(task)
        for _ in range(1000):  # startup takes a few loop turns; bounded so a failure surfaces
            if server.started or task.done():
                break
            await asyncio.sleep(0.005)
        if task.done():
            task.result()  # raises what stopped it
        if not server.started:
            raise OSError(f"the {what} server on {self.config.host}:{port} did not start")
        return server

    async def _start_grpc(self, port: int) -> None:
        try:
            from crossinfer.serve.grpc import start_grpc_server
        except ImportError as exc:
            log_event("grpc_unavailable", logging.WARNING, reason=str(exc))
            return
        if port == 0:
            port = _free_port(self.config.host)
        self._grpc = await start_grpc_server(
            self.repository,
            self.config.host,
            port,
            server_ready=lambda: self.app.ready,
            max_message_bytes=self.config.max_body_bytes,  # one size limit for both protocols
            shared_memory=self.shared_memory,
            engine=self.config.grpc_engine,
        )
        self.ports["grpc"] = port

    # --- stop -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask `serve_forever` to stop (signal handlers call this; safe to call twice)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def serve_forever(self) -> None:
        """Start, wait for `request_stop` (SIGTERM/SIGINT under `run_server`), then stop."""
        await self.start()
        assert self._stop_requested is not None
        await self._stop_requested.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, finish every accepted request, drain the batchers, close everything.

        Order matters: the front ends finish their in-flight requests while the batchers still
        run them; only then are the models unloaded. The drain has a hard end: requests still
        running after ``drain_timeout_s`` are answered 503 / UNAVAILABLE with the reason,
        every port closes within `ABORT_GRACE_S` more, and `drain_timed_out` is set (the
        command line then exits non-zero without waiting for a compute it cannot interrupt).
        """
        if self._stopped.is_set():
            return
        log_event("server_stopping")
        self.app.ready = False  # load balancers see not-ready first
        for model in self.repository.ready_models():
            model.batcher.release()  # a held batcher (test hook) would keep its requests forever
        closing: list[asyncio.Future[Any]] = []
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            closing.append(self._http_task)
        if self._grpc is not None:
            # its own grace outlasts ours: the calls still running at our deadline are answered
            # with the reason below, not grpc's bare "Cancelling all calls"
            grace = self.config.drain_timeout_s + 2 * ABORT_GRACE_S
            closing.append(asyncio.ensure_future(self._grpc.stop(grace)))
        if closing:
            _, pending = await asyncio.wait(closing, timeout=self.config.drain_timeout_s)
            if pending:
                self._abort_in_flight()
                _, pending = await asyncio.wait(closing, timeout=ABORT_GRACE_S)
            if pending:  # a front end still not closed: close it without a goodbye
                self.drain_timed_out = True
                await self._force_close()
                await asyncio.wait(closing, timeout=ABORT_GRACE_S)
        totals = {
            m.name: {
                "success": s.success.count,
                "fail": s.fail.count,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
            }
            for m in self.repository.ready_models()
            for s in [m.batcher.stats()]
        }
        if self.drain_timed_out:
            # a batch still computing cannot be interrupted; the process exits without it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.repository.stop(drain=False), ABORT_GRACE_S)
        else:
            await self.repository.stop()
        self.shared_memory.close()  # unmaps the clients' regions; never unlinks them
        if self._metrics_http is not None:
            self._metrics_http.should_exit = True
        for task in self._tasks:
            if task is not self._metrics_task:
                task.cancel()  # the batch-size logger; done tasks ignore it
        if self._tasks:  # (none when a listener failed to start)
            _, pending_tasks = await asyncio.wait(self._tasks, timeout=ABORT_GRACE_S)
            if pending_tasks:
                await self._force_close()
                await asyncio.wait(self._tasks, timeout=ABORT_GRACE_S)
        if self.metrics is not None:
            self.metrics.close()
        self._stopped.set()
        log_event("server_stopped", models=totals, drain_timed_out=self.drain_timed_out)

    def _abort_in_flight(self) -> None:
        """The drain ran out of time: answer what is still running, with the reason."""
        self.drain_timed_out = True
        reason = (
            f"the server is shutting down and its drain timeout ({self.config.drain_timeout_s:g} "
            "s, crossinfer serve --drain-timeout) expired before this request finished: retry "
            "on another replica"
        )
        http = self.app.abort_in_flight(reason)
        grpc = self._grpc.abort_in_flight(reason) if self._grpc is not None else 0
        log_event(
            "drain_timeout",
            logging.WARNING,
            drain_timeout_s=self.config.drain_timeout_s,
            http_requests=http,
            grpc_calls=grpc,
        )

    async def _force_close(self) -> None:
        """Close every listener and connection now, without waiting for their requests."""
        for server in (self._http, self._metrics_http):
            if server is not None:
                server.should_exit = server.force_exit = True
        if self._grpc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._grpc.stop(0), ABORT_GRACE_S)
        for task in (self._http_task, self._metrics_task):
            if task is not None and not task.done():
                task.cancel()

    # --- logs -------------------------------------------------------------------------------

    async def _log_batches(self) -> None:
        """Log each model's executions by batch size while traffic flows: is batching happening?"""
        seen: dict[str, int] = {}
        while True:
            await asyncio.sleep(self.config.stats_log_interval_s)
            for model in self.repository.ready_models():
                stats = model.batcher.stats()
                key = f"{model.name}/{id(model)}"
                if stats.execution_count != seen.get(key, 0):  # only once traffic flowed
                    seen[key] = stats.execution_count
                    log_event(
                        "batch_stats",
                        model=model.name,
                        requests=stats.success.count,
                        failed=stats.fail.count,
                        executions=stats.execution_count,
                        executions_by_batch_size=stats.executions_by_batch_size(),
                        pending=stats.pending,
                    )


def _listen(host: str, port: int, backlog: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        raise OSError(
            f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc} "
            f"(choose another port with --{what}-port)"
        ) from exc
    sock.setblocking(False)
    return sock


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _metrics_app(metrics: ServerMetrics) -> Callable[..., Coroutine[Any, Any, None]]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].rstrip("/") != "/metrics":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"metrics are at /metrics\n"})
            return
        body = metrics.render()
        headers = [(b"content-type", CONTENT_TYPE.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


# --- entry points ----------------------------------------------------------------------------


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for the crossinfer.serve logger (once per process)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def run_server(
    repository: ModelRepository,
    config: ServerConfig,
    *,
    on_ready: Callable[[InferenceServer], None] | None = None,
) -> InferenceServer:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (blocking, uvloop).

    A second signal while shutting down exits at once, as a person pressing Ctrl+C twice means.
    """
    server = InferenceServer(repository, config)
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log_event("signal", signal=sig.name, action="graceful shutdown")
            server.request_stop()
            return
        log_event("signal", logging.WARNING, signal=sig.name, action="exit now, not draining")
        logging.shutdown()
        os._exit(128 + int(sig))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await server.start()
        if on_ready is not None:
            on_ready(server)
        assert server._stop_requested is not None
        await server._stop_requested.wait()
        await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    if server.drain_timed_out:
        # every port is closed; what remains is a compute thread that cannot be interrupted,
        # which the interpreter would wait for at exit: the drain's end is a hard end
        log_event(
            "exit",
            logging.WARNING,
            code=DRAIN_TIMEOUT_EXIT_CODE,
            reason="requests were cut off by --drain-timeout",
        )
        logging.shutdown()
        sys.stderr.flush()
        os._exit(DRAIN_TIMEOUT_EXIT_CODE)
    return server


class BackgroundServer:
    """An InferenceServer on its own event loop thread: ``with BackgroundServer(repo) as s:``.

    `call(coro)` runs a coroutine on the server's loop (to reach the repository or a batcher's
    hold hook from a test). Leaving the block stops the server gracefully.
    """

    def __init__(self, repository: ModelRepository, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig(http_port=0, grpc_port=0, metrics_port=0)
        self.server = InferenceServer(repository, self.config)
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        try:
            self.call(self.server.start())
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
            raise

    def stop(self) -> None:
        if self._thread.is_alive():
            self.call(self.server.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call_soon(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run a plain function on the server's loop thread (batchers are not thread-safe)."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper(), timeout)

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.server.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.server.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.server.ports['metrics']}/metrics"

    def model_ready(self, name: str) -> bool:
        return any(
            r["name"] == name and r["state"] == READY for r in self.server.repository.index()
        )
