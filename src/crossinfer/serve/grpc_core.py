"""The gRPC front end driven straight on grpc's C core: one poll thread, calls answered on the loop.

grpc.aio hands every completion-queue event of a call (the call, its message, the answer, the
close) from its poller thread to the event loop one by one, and runs each call through several
coroutines of its own: on a 2-core machine that costs the loop thread about 270 us per call with
no work at all, more than a whole HTTP request (benchmarks/grpc_engines.py, docs/benchmarks.md).
Here one thread polls the completion queue, starts each call's receive itself, and hands the
loop only what it must act on (a unary call's request, a stream's events) in batches: one
wake-up for every call that arrived since the last. The loop decodes, runs the same `_Service`
handlers as the grpc.aio engine, and answers with one batch of operations (initial metadata,
message, status, close), which the C core sends from its own threads.

This uses grpcio's Cython layer (`grpc._cython.cygrpc`), the layer grpcio's own servers are
written on; `available()` says whether the installed grpcio has what is used, and
`crossinfer serve --grpc-engine aio` keeps the grpc.aio engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from crossinfer.serve import grpc_messages as pb
from crossinfer.serve.grpc import _decoder, _failure, _Service, _Unparseable, bounded

__all__ = ["CoreGrpcServer", "available", "start_core_server"]

log = logging.getLogger(__name__)

try:  # grpcio's own Cython layer; missing or changed in some grpcio: the aio engine then
    from grpc._cython import cygrpc as _cy

    _NEEDED = (
        "CompletionQueue",
        "Server",
        "ReceiveMessageOperation",
        "SendInitialMetadataOperation",
        "SendMessageOperation",
        "SendStatusFromServerOperation",
        "ReceiveCloseOnServerOperation",
        "CompletionType",
    )
    _MISSING = [name for name in _NEEDED if not hasattr(_cy, name)]
except ImportError as exc:  # pragma: no cover - grpcio always ships it today
    _cy = None
    _MISSING = [f"grpc._cython.cygrpc ({exc})"]


def available() -> str | None:
    """None when this grpcio can run the core engine, else what it lacks."""
    if _MISSING:
        return f"grpcio {grpc.__version__} lacks {', '.join(_MISSING)}"
    return None


_OK = grpc.StatusCode.OK.value[0]
_NO_METADATA: tuple[Any, ...] = ()
_NEW_CALL = object()  # the tag of a request_call
_SHUTDOWN = object()  # the tag of the server's shutdown


_DONE = object()  # the tag of a call's last batch: when it completes, the call is over


class _Unary:
    """A unary call whose request message is being received (its tag) or was (its data)."""

    __slots__ = ("call", "data", "decode", "handler", "ok")

    def __init__(self, call: Any, handler: Any, decode: Callable[[bytes], Any]) -> None:
        self.call = call
        self.handler = handler
        self.decode = decode
        self.data: bytes | None = None
        self.ok = False


class _Stream:
    """A streaming call, handed to the loop as soon as it arrives."""

    __slots__ = ("call", "decode")

    def __init__(self, call: Any, decode: Callable[[bytes], Any]) -> None:
        self.call = call
        self.decode = decode


class _Aborted(Exception):
    """A stream handler's `context.abort`: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _StreamContext:
    """What `_Service.ModelStreamInfer` asks of its context: `abort` only."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def _finish(call: Any, code: int, details: str, payload: bytes | None, *, head: bool) -> None:
    """The call's last batch: (initial metadata), (the answer), the status, the close."""
    ops: list[Any] = []
    if head:
        ops.append(_cy.SendInitialMetadataOperation(_NO_METADATA, 0))
    if payload is not None:
        ops.append(_cy.SendMessageOperation(payload, 0))
    ops.append(_cy.SendStatusFromServerOperation(_NO_METADATA, code, details.encode(), 0))
    ops.append(_cy.ReceiveCloseOnServerOperation(0))
    call.start_server_batch(tuple(ops), _DONE)


class CoreGrpcServer:
    """GRPCInferenceService on grpc's C core; `stop(grace_s)` and `abort_in_flight(reason)` as
    the grpc.aio engine's `GrpcServer`."""

    engine = "core"

    def __init__(
        self,
        service: _Service,
        loop: asyncio.AbstractEventLoop,
        options: tuple[tuple[str, Any], ...],
    ) -> None:
        assert _cy is not None
        self._service = service
        self._loop = loop
        self._cq = _cy.CompletionQueue()
        self._server = _cy.Server(options, False)
        self._server.register_completion_queue(self._cq)
        self._unary: dict[bytes, tuple[Any, Callable[[bytes], Any]]] = {}
        self._stream: dict[bytes, Callable[[bytes], Any]] = {}
        for rpc in pb.RPCS:
            path = f"/{pb.SERVICE}/{rpc.name}".encode()
            if rpc.streaming:
                self._stream[path] = _decoder(rpc.request)
            else:
                self._unary[path] = (getattr(service, rpc.name), _decoder(rpc.request))
        self._handoff: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._scheduled = False
        self._calls = 0  # calls started and not yet over (the poll thread's count)
        self._accepting = True
        # the server object's own calls (request_call, shutdown, cancel_all_calls, destroy)
        # come from two threads; grpcio's servers hold one lock around them too. Without it,
        # a shutdown with no call running completes inside shutdown_and_notify (which releases
        # the GIL), the poll thread sees it and destroys the server, and the shutdown still
        # running in the loop thread touches the freed server: a segfault, seen in the tests
        self._lock = threading.Lock()
        self._destroyed = False
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._poll, name="crossinfer-grpc-core", daemon=True)

    def listen(self, address: str) -> None:
        port = self._server.add_http2_port(address.encode())
        if not port:
            raise OSError(f"cannot listen for gRPC on {address} (the address is in use?)")

    def start(self) -> None:
        with self._lock:
            self._server.start()
            self._server.request_call(self._cq, self._cq, _NEW_CALL)
        self._calls += 1  # the pending request_call counts as a call until it completes
        self._thread.start()

    # --- the poll thread --------------------------------------------------------------------

    def _poll(self) -> None:
        shutdown_done = False
        while True:
            event = self._cq.poll()
            if event.completion_type == _cy.CompletionType.queue_shutdown:
                break
            try:
                tag = event.tag
                if tag is _DONE:
                    self._calls -= 1
                elif tag is _NEW_CALL:
                    self._calls -= 1
                    with self._lock:
                        if self._accepting:
                            self._server.request_call(self._cq, self._cq, _NEW_CALL)
                            self._calls += 1
                    if event.success:
                        self._arrived(event)
                elif type(tag) is _Unary:
                    tag.ok = event.success
                    if event.success:
                        tag.data = event.batch_operations[0].message()
                    self._hand(tag)
                elif tag is _SHUTDOWN:
                    shutdown_done = True
                else:  # a future the loop waits on (a stream's receive or send)
                    self._hand((tag, event))
            except Exception:  # a bug: logged, and the thread goes on serving the others
                log.exception("gRPC core engine: an event could not be handled")
            if shutdown_done and self._calls == 0:
                with self._lock:
                    self._server.destroy()
                    self._destroyed = True
                self._loop.call_soon_threadsafe(self._set_stopped)
                self._cq.shutdown()
                shutdown_done = False

    def _arrived(self, event: Any) -> None:
        call = event.call
        method = event.call_details.method
        self._calls += 1
        unary = self._unary.get(method)
        if unary is not None:
            state = _Unary(call, unary[0], unary[1])
            call.start_server_batch((_cy.ReceiveMessageOperation(0),), state)
        elif method in self._stream:
            self._hand(_Stream(call, self._stream[method]))
        else:
            name = method.decode(errors="replace")
            _finish(
                call,
                grpc.StatusCode.UNIMPLEMENTED.value[0],
                bounded(f"method {name} is not implemented by this server"),
                None,
                head=True,
            )

    def _hand(self, item: Any) -> None:
        """Give the loop `item`: one wake-up for everything handed until the loop looks."""
        self._handoff.put(item)
        if not self._scheduled:
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to answer
                self._loop.call_soon_threadsafe(self._take)

    # --- the loop -----------------------------------------------------------------------------

    def _take(self) -> None:
        self._scheduled = False  # before draining: a later hand-off schedules again
        get = self._handoff.get_nowait
        loop = self._loop
        while True:
            try:
                item = get()
            except queue.Empty:
                return
            if type(item) is _Unary:
                loop.create_task(self._answer(item))
            elif type(item) is _Stream:
                loop.create_task(self._answer_stream(item.call, item.decode))
            else:
                future, event = item
                if not future.done():
                    future.set_result(event)

    def _set_stopped(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)

    async def _answer(self, state: _Unary) -> None:
        if not state.ok:  # the client went away, or the message was refused (too large)
            _finish(state.call, grpc.StatusCode.CANCELLED.value[0], "", None, head=True)
            return
        service = self._service
        task = asyncio.current_task()
        assert task is not None
        service._in_flight.add(task)
        payload: bytes | None = None
        details = ""
        try:
            request = state.decode(state.data or b"")
            if isinstance(request, _Unparseable):
                code, details = grpc.StatusCode.INVALID_ARGUMENT.value[0], request.error
            else:
                reply = await state.handler(request)
                payload = reply.SerializeToString()
                code = _OK
        except asyncio.CancelledError:
            reason = service._aborting()
            if reason is None:  # the server is closing without a reason: say so, then stop
                _finish(state.call, grpc.StatusCode.CANCELLED.value[0], "", None, head=True)
                raise
            code, details = grpc.StatusCode.UNAVAILABLE.value[0], reason
        except Exception as exc:
            status, details = _failure(exc, state.handler.__name__)
            code = status.value[0]
        finally:
            service._in_flight.discard(task)
        _finish(state.call, code, details, payload, head=True)

    async def _answer_stream(self, call: Any, decode: Callable[[bytes], Any]) -> None:
        loop = self._loop

        async def frames() -> AsyncIterator[Any]:
            while True:
                future: asyncio.Future[Any] = loop.create_future()
                call.start_server_batch((_cy.ReceiveMessageOperation(0),), future)
                event = await future
                data = event.batch_operations[0].message() if event.success else None
                if data is None:  # the client half-closed, or its side broke
                    return
                yield decode(data)

        head = True
        code, details = _OK, ""
        replies = self._service.ModelStreamInfer(frames(), _StreamContext())
        try:
            async for reply in replies:
                ops: tuple[Any, ...] = (_cy.SendMessageOperation(reply.SerializeToString(), 0),)
                if head:
                    ops = (_cy.SendInitialMetadataOperation(_NO_METADATA, 0), *ops)
                    head = False
                future: asyncio.Future[Any] = loop.create_future()
                call.start_server_batch(ops, future)
                if not (await future).success:  # the client is gone: nothing more to send
                    code = grpc.StatusCode.CANCELLED.value[0]
                    break
        except _Aborted as exc:
            code, details = exc.code.value[0], exc.details
        except asyncio.CancelledError:
            _finish(call, grpc.StatusCode.CANCELLED.value[0], "", None, head=head)
            raise
        except Exception as exc:
            status, details = _failure(exc, "ModelStreamInfer")
            code = status.value[0]
        finally:
            await replies.aclose()  # type: ignore[attr-defined]
        _finish(call, code, details, None, head=head)

    # --- stop ---------------------------------------------------------------------------------

    async def stop(self, grace_s: float | None) -> None:
        """Refuse new calls; let running ones finish within `grace_s`, then cancel them."""
        with self._lock:
            if self._accepting:
                self._accepting = False
                self._server.shutdown(self._cq, _SHUTDOWN)
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), grace_s or 0)
            return
        except TimeoutError:
            pass
        with self._lock:
            if not self._destroyed:  # (a destroyed server's calls would crash the process)
                self._server.cancel_all_calls()
        for task in list(self._service._in_flight):
            task.cancel()
        await asyncio.shield(self._stopped)

    def abort_in_flight(self, reason: str) -> int:
        """Answer every running call UNAVAILABLE with `reason`; how many there were."""
        return self._service.abort_in_flight(reason)


def start_core_server(
    service: _Service,
    address: str,
    options: tuple[tuple[str, Any], ...],
) -> CoreGrpcServer:
    """Listen on `address` and start answering, from the running event loop."""
    server = CoreGrpcServer(service, asyncio.get_running_loop(), options)
    server.listen(address)
    server.start()
    return server
