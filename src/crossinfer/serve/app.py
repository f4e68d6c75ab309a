"""The HTTP front end of `crossinfer serve`: KServe v2 REST with Triton's extensions, as raw ASGI.

No web framework: routing is a split of the path, and the hot path (infer) is parse -> batcher
-> encode with nothing in between, because framework overhead dominates a near-zero model.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from crossinfer.errors import ClientDisconnectedError, MethodNotAllowedError, ProtocolError
from crossinfer.serve.events import log_event
from crossinfer.serve.protocol import (
    HEADER_LENGTH,
    InferRequest,
    build_infer_response,
    error_body,
    parse_infer_request,
    server_metadata,
    write_shared_memory_outputs,
)
from crossinfer.serve.repository import ModelRepository, ServedModel
from crossinfer.serve.shm import CUDA, SYSTEM, SharedMemoryRegistry, decode_raw_handle

__all__ = ["DEFAULT_MAX_BODY_BYTES", "HttpApp", "error_headers", "expect_method", "read_body"]

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
"""Request bodies beyond this (before or after decompression) are refused with 413."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_VARY = (b"vary", b"Accept-Encoding")
_SHM_ROUTES = {"systemsharedmemory": SYSTEM, "cudasharedmemory": CUDA}
_HEADER_LENGTH = HEADER_LENGTH.lower().encode()
_COMPRESS_MIN_BYTES = 1024  # smaller responses are not worth compressing
_OFFLOAD_BYTES = 64 * 1024  # JSON bodies (or compressed ones) larger than this parse in a thread
_OFFLOAD_VALUES = 16 * 1024  # responses with more JSON numbers than this encode in a thread


class HttpApp:
    """The ASGI application: every KServe v2 / Triton REST route over one `ModelRepository`.

    ``ready`` is the server's readiness (false while starting and shutting down); the server
    that owns this app flips it. ``shared_memory`` holds the regions clients register (shared
    with the gRPC front end; a fresh registry by default).
    """

    def __init__(
        self,
        repository: ModelRepository,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        shared_memory: SharedMemoryRegistry | None = None,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        self.repository = repository
        self.max_body_bytes = max_body_bytes
        self.shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry()
        self.ready = False
        # the tasks answering requests now: a drain that times out cancels them with a reason
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._abort_reason: str | None = None

    def abort_in_flight(self, reason: str) -> int:
        """Answer every request still running 503 ``{"error": reason}`` now (drain timed out).

        Returns how many there were.
        """
        self._abort_reason = reason
        tasks = [t for t in self._in_flight if not t.done()]
        for task in tasks:
            task.cancel(reason)
        return len(tasks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not part of the protocol
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            if parts[0] != "v2":
                raise ProtocolError(404, f"no route for {scope['path']}: the API lives under /v2")
            await self._route(method, parts[1:], scope, receive, send)
        except ClientDisconnectedError:
            pass  # no one to answer
        except ProtocolError as exc:
            await _send_error(send, exc.status, exc.message, scope, exc)
        except asyncio.CancelledError:
            if self._abort_reason is None:
                raise  # the server is going away without a drain deadline: nothing to answer
            task.uncancel()  # answered below, not propagated
            with contextlib.suppress(RuntimeError):  # a response already begun cannot be redone
                await _send_error(send, 503, self._abort_reason, scope)
        except Exception as exc:  # a bug must answer 500 and leave the server serving
            log_event("http_internal_error", logging.ERROR, path=scope["path"], error=repr(exc))
            await _send_error(send, 500, f"internal error: {type(exc).__name__}: {exc}", scope)
        finally:
            self._in_flight.discard(task)

    async def _route(
        self, method: str, parts: list[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        n = len(parts)
        if n == 0:
            expect_method(method, "GET", scope)
            await _send_json(send, 200, server_metadata())
        elif parts[0] == "models" and n >= 2:
            if n == 2 and parts[1] == "stats":
                expect_method(method, "GET", scope)
                models = self.repository.ready_models()
                await _send_json(send, 200, {"model_stats": [m.statistics() for m in models]})
                return
            # the ASGI server hands over the path percent-decoded already
            name = parts[1]
            version = None
            rest = parts[2:]
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            await self._model_route(method, name, version, rest, scope, receive, send)
        elif parts[0] == "health" and n == 2 and parts[1] in ("live", "ready"):
            expect_method(method, "GET", scope)
            ok = parts[1] == "live" or self.ready
            await _send_empty(send, 200 if ok else 503)
        elif parts[0] == "repository" and n >= 2:
            await self._repository_route(method, parts[1:], scope, receive, send)
        elif parts[0] in _SHM_ROUTES:
            await self._shared_memory_route(
                _SHM_ROUTES[parts[0]], method, parts[1:], scope, receive, send
            )
        else:
            raise ProtocolError(404, f"no route for {scope['path']}")

    async def _model_route(
        self,
        method: str,
        name: str,
        version: str | None,
        rest: list[str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        action = rest[0] if len(rest) == 1 else ("" if not rest else None)
        if action == "infer":
            expect_method(method, "POST", scope)
            await self._infer(name, version, scope, receive, send)
        elif action == "ready":
            expect_method(method, "GET", scope)
            try:
                self.repository.get(name, version)
            except ProtocolError as exc:
                await _send_empty(send, 404 if exc.status == 404 else 400)
                return
            await _send_empty(send, 200)
        elif action == "":
            expect_method(method, "GET", scope)
            await _send_json(send, 200, self.repository.get(name, version).metadata())
        elif action == "config":
            expect_method(method, "GET", scope)
            await _send_json(send, 200, self.repository.get(name, version).config())
        elif action == "stats":
            expect_method(method, "GET", scope)
            stats = self.repository.get(name, version).statistics()
            await _send_json(send, 200, {"model_stats": [stats]})
        else:
            raise ProtocolError(404, f"no route for {scope['path']}")

    async def _repository_route(
        self, method: str, parts: list[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        expect_method(method, "POST", scope)
        body = await self._read_json_object(scope, receive)
        if parts == ["index"]:
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise ProtocolError(400, f"'ready' must be true or false, got {ready!r}")
            await _send_json(send, 200, self.repository.index(ready_only=ready))
            return
        if len(parts) != 3 or parts[0] != "models" or parts[2] not in ("load", "unload"):
            raise ProtocolError(404, f"no route for {scope['path']}")
        self.repository.check_client_control(parts[2], parts[1])
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(400, "'parameters' must be an object")
        if any(key == "config" or key.startswith("file:") for key in params):
            raise ProtocolError(
                400,
                "load parameters 'config' and 'file:' are not supported: edit the model's "
                "config.toml or spec in the repository, then load it",
            )
        name = parts[1]
        if parts[2] == "load":
            await self.repository.load(name)
        else:
            await self.repository.unload(name)
        await _send_empty(send, 200)

    # --- shared memory ----------------------------------------------------------------------

    async def _shared_memory_route(
        self, kind: str, method: str, parts: list[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """``[/region/{name}]/status``, ``/region/{name}/register``, ``[/region/{name}]/unregister``."""
        if len(parts) == 1:
            name, action = "", parts[0]
        elif len(parts) == 3 and parts[0] == "region" and parts[1]:
            name, action = parts[1], parts[2]
        else:
            raise ProtocolError(404, f"no route for {scope['path']}")
        registry = self.shared_memory
        if action == "status":
            expect_method(method, "GET", scope)
            await _send_json(send, 200, registry.status(kind, name or None))
        elif action == "register" and name:
            expect_method(method, "POST", scope)
            body = await self._read_json_object(scope, receive)
            if kind == SYSTEM:
                key = body.get("key")
                if not isinstance(key, str):
                    raise ProtocolError(
                        400,
                        f"cannot register system shared memory region '{name}': the body needs "
                        f"'key' (the shared memory object's name), got {key!r}",
                    )
                registry.register_system(
                    name,
                    key,
                    offset=body.get("offset", 0),
                    byte_size=_required(body, "byte_size", name),
                )
            else:
                handle = decode_raw_handle(body.get("raw_handle"), name)
                await registry.register_cuda(
                    name,
                    handle,
                    device_id=_required(body, "device_id", name),
                    byte_size=_required(body, "byte_size", name),
                )
            await _send_empty(send, 200)
        elif action == "unregister":
            expect_method(method, "POST", scope)
            await self._read_body(scope, receive)  # empty by the protocol; drained all the same
            registry.unregister(kind, name or None)
            await _send_empty(send, 200)
        else:
            raise ProtocolError(404, f"no route for {scope['path']}")

    # --- infer --------------------------------------------------------------------------------

    async def _infer(
        self, name: str, version: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        start = time.monotonic_ns()
        header_length: int | None = None
        encoding: str | None = None
        accept: bytes = b""
        for key, value in scope["headers"]:
            if key == _HEADER_LENGTH:
                try:
                    header_length = int(value)
                except ValueError:
                    raise ProtocolError(
                        400, f"{HEADER_LENGTH} must be an integer, got {value[:40]!r}"
                    ) from None
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")
            elif key == b"accept-encoding":
                accept = value
        body = await self._read_body(scope, receive)
        # looked up once the body is in: a model reloaded meanwhile is the new one already
        model = self.repository.get(name, version)
        try:
            parse = functools.partial(
                parse_infer_request,
                body,
                header_length=header_length,
                content_encoding=encoding,
                inputs=model.inputs,
                outputs=model.outputs,
                max_body_bytes=self.max_body_bytes,
                shared_memory=self.shared_memory,
            )
            json_bytes = len(body) if header_length is None or encoding else header_length
            # a large JSON body takes milliseconds to parse: in a thread, health probes and small
            # requests keep being answered meanwhile (the GIL switches every 5 ms)
            request = await asyncio.to_thread(parse) if json_bytes > _OFFLOAD_BYTES else parse()
        except ProtocolError:
            model.record_rejected(time.monotonic_ns() - start)
            raise
        outputs = await model.infer(request)
        build = functools.partial(
            _encode_response, model, request, outputs, accept if accept else None
        )
        in_shm = request.shared_memory_outputs
        json_values = sum(
            a.size for n, a in outputs.items() if not request.wants_binary(n) and n not in in_shm
        )
        large = json_values > _OFFLOAD_VALUES or (accept and _total_bytes(outputs) > _OFFLOAD_BYTES)
        payload, raw_headers = await asyncio.to_thread(build) if large else build()
        await _send(send, 200, raw_headers, payload)

    # --- bodies -------------------------------------------------------------------------------

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        return await read_body(scope, receive, self.max_body_bytes)

    async def _read_json_object(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        body = await self._read_body(scope, receive)
        if not body.strip():
            return {}
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError(400, f"request JSON is malformed: {exc}") from exc
        if not isinstance(doc, dict):
            raise ProtocolError(400, "the request body must be a JSON object")
        return doc


def _encode_response(
    model: ServedModel, request: InferRequest, outputs: dict[str, Any], accept: bytes | None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    written = write_shared_memory_outputs(request, outputs) if request.shared_memory_outputs else {}
    payload, headers = build_infer_response(
        model.name,
        model.version,
        request.id,
        outputs,
        requested=request.requested_outputs,
        binary=request.binary_outputs,
        shared_memory=written,
    )
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw_headers.append(_VARY)  # the answer depends on Accept-Encoding: caches must key on it
    if accept and len(payload) >= _COMPRESS_MIN_BYTES:
        payload, coding = _compress(payload, accept)
        if coding:
            raw_headers.append((b"content-encoding", coding))
    return payload, raw_headers


def _required(body: dict[str, Any], key: str, region: str) -> Any:
    if key not in body:
        raise ProtocolError(
            400, f"cannot register shared memory region '{region}': the body needs '{key}'"
        )
    return body[key]


def _total_bytes(outputs: dict[str, Any]) -> int:
    return sum(int(a.nbytes) for a in outputs.values())


def expect_method(method: str, allowed: str, scope: Scope) -> None:
    """Refuse a request whose method the route does not take: 405, with ``Allow``."""
    if method != allowed:
        raise MethodNotAllowedError(f"{scope['path']} takes {allowed}, not {method}", allowed)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request's whole body, refused with 413 once it passes ``limit`` bytes.

    A Content-Length over the limit is refused before any of the body is read; a body without
    one (chunked) is counted as it arrives. Raises ClientDisconnectedError when the client goes
    away first. Shared by `serve`'s front end and `serve --ray`'s ingress.
    """
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            raise ProtocolError(
                413,
                f"request body is {int(value)} bytes, more than the limit of {limit} bytes "
                "(crossinfer serve --max-body-bytes)",
            )
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnectedError
    body: bytes = message.get("body", b"")
    size = len(body)
    if size > limit:
        raise _too_large(limit)
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(
        413,
        f"request body is more than the limit of {limit} bytes (crossinfer serve --max-body-bytes)",
    )


def error_headers(exc: ProtocolError | None) -> list[tuple[bytes, bytes]]:
    """The headers of an ``{"error": ...}`` answer: JSON, and ``Allow`` on a 405."""
    if isinstance(exc, MethodNotAllowedError):
        return [*_JSON, (b"allow", exc.allowed.encode())]
    return _JSON


def _coding(accept: bytes) -> bytes:
    """The content coding `Accept-Encoding` prefers among gzip and deflate; b"" for none.

    RFC 9110: ``q=0`` means "not acceptable"; ``*`` stands for every coding not named.
    """
    q: dict[bytes, float] = {}
    for item in accept.lower().split(b","):
        name, _, params = item.partition(b";")
        weight = 1.0
        for param in params.split(b";"):
            key, _, value = param.strip().partition(b"=")
            if key == b"q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0  # a weight we cannot read is no consent to compress
        q[name.strip()] = weight
    star = q.get(b"*", 0.0)
    best, best_q = b"", 0.0
    for coding in (b"gzip", b"deflate"):  # gzip first: it wins ties
        weight = q.get(coding, star)
        if weight > best_q:
            best, best_q = coding, weight
    return best


def _compress(payload: bytes, accept: bytes) -> tuple[bytes, bytes]:
    coding = _coding(accept)
    if coding == b"gzip":
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        return compressor.compress(payload) + compressor.flush(), b"gzip"
    if coding == b"deflate":
        return zlib.compress(payload), b"deflate"
    return payload, b""


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    # with a content-length the server writes the body as is instead of chunk-encoding it
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, doc: Any) -> None:
    await _send(send, status, _JSON, json.dumps(doc, separators=(",", ":")).encode())


async def _send_empty(send: Send, status: int) -> None:
    await _send(send, status, [], b"")


async def _send_error(
    send: Send, status: int, message: str, scope: Scope, exc: ProtocolError | None = None
) -> None:
    level = logging.WARNING if status >= 500 else logging.DEBUG
    log_event("http_error", level, path=scope["path"], status=status, error=message)
    await _send(send, status, error_headers(exc), error_body(message))


async def _lifespan(receive: Receive, send: Send) -> None:
    # the server that owns the app loads models itself; lifespan is acknowledged only
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
