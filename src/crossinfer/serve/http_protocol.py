"""uvicorn's httptools connection with the limits a server facing clients needs.

Headers must arrive within `HttpLimits.header_timeout_s` and stay under `max_header_bytes`,
a body within `body_timeout_s` of its headers (slowloris); every refusal, the parser's own
included, is a KServe v2 error body ``{"error": ...}``, never uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from crossinfer.serve.events import log_event
from crossinfer.serve.protocol import error_body

__all__ = ["HttpLimits", "guarded_protocol"]

_LINGER_S = 2.0  # after a refusal: how long the client's remaining bytes are read and dropped


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """How long a client may take to send a request, and how large its headers may be."""

    header_timeout_s: float = 10.0  # request line and headers, from their first byte
    body_timeout_s: float = 30.0  # the whole body, from the end of the headers
    max_header_bytes: int = 64 * 1024  # request line and headers together

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be >= 1024, got {self.max_header_bytes}")


class _GuardedProtocol(HttpToolsProtocol):
    """One connection: uvicorn's parser callbacks, plus a timer for the part being received."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # one lazy timer per connection: a phase sets a deadline (a float, no timer churn per
        # request); the timer, when it fires, refuses if the deadline passed or re-arms for it
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._phase = "head"  # what the deadline is for: "head" or "body"
        self._in_head = True  # receiving a request line and headers (or waiting for them)
        self._head_bytes = 0  # raw bytes received while in the head (a header never ending)
        self._head_size = 0  # the parsed request line and headers
        self._refused = False

    # --- timers -------------------------------------------------------------------------------

    def _arm(self, phase: str) -> None:
        self._phase = phase
        seconds = self.limits.header_timeout_s if phase == "head" else self.limits.body_timeout_s
        self._deadline = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    def _disarm(self) -> None:
        self._deadline = None

    def _check_deadline(self) -> None:
        self._timer = None
        if self._deadline is None or self._refused or self.transport.is_closing():
            return
        if self.loop.time() < self._deadline:  # a later phase moved it: wait for that one
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)
            return
        if self._phase == "head":
            seconds = self.limits.header_timeout_s
            message = (
                f"the request line and headers did not arrive within {seconds:g} s "
                "(crossinfer serve --header-timeout)"
            )
        else:
            seconds = self.limits.body_timeout_s
            message = (
                f"the request body did not arrive within {seconds:g} s of its headers "
                "(crossinfer serve --body-timeout)"
            )
        self._refuse(408, message)

    # --- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head")  # a client that connects and sends nothing is a slow head too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # no WebSocket in this protocol (ws="none"): uvicorn's warning, then plain HTTP
            self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            detail = str(exc)[:200] or type(exc).__name__
            self._refuse(400, f"invalid HTTP request: {detail}")
            return
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse_large_head()

    def _refuse_large_head(self) -> None:
        limit = self.limits.max_header_bytes
        self._refuse(
            431,
            f"the request line and headers are over {limit} bytes (crossinfer serve "
            "--max-header-bytes)",
        )

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with a v2 error body and close (a timer or the parser said no)."""
        self._disarm()
        self._refused = True
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not self._in_head:  # in a request's body
            if cycle.response_started:
                # answered already (a 413 needs no body) or half an answer is out: hang up
                self.transport.close()
                return
            # the application's answer, if it ever comes, goes nowhere; its receive() ends
            cycle.disconnected = True
            cycle.message_event.set()
        log_event("http_refused", status=status, error=message)
        body = error_body(message)
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        # a lingering close: closing with the client's bytes still unread would reset the
        # connection, and the reset can destroy the answer before the client reads it; so stop
        # writing, drop what still arrives, and close on the client's EOF or after a moment
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)
        else:
            self.transport.close()

    # --- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_size = 0
        self._arm("head")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_size > self.limits.max_header_bytes:
            self._refuse_large_head()
            return
        super().on_headers_complete()
        if self.cycle is not None and not self._refused:
            # duck-typed: the cycle calls write, close, is_closing and nothing else of it
            self.cycle.transport = _CoalescingTransport(self.transport)  # type: ignore[assignment]
        self._arm("body")

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._in_head = True
        super().on_message_complete()


class _CoalescingTransport:
    """The connection's transport as one response sees it: the status line and headers go out
    in the same write (one send syscall, one TCP segment) as the body that follows them.

    uvicorn writes the head when the app sends ``http.response.start`` and the body on
    ``http.response.body``; on loopback each write is a syscall that also wakes the client, and
    the pair cost about as much as the rest of a small request. uvicorn always follows a head
    with a body write (empty for a bodiless answer), or closes, which flushes.
    """

    __slots__ = ("_headed", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._headed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if len(data) < 65536:
                self._transport.write(held + data)
                return
            self._transport.write(held)  # a large body is not copied to join it
        elif not self._headed and data[:12] != b"HTTP/1.1 100":
            # this response's head (a cycle's first write but an interim "100 Continue", which
            # must go out at once: the client waits for it before sending the body)
            self._headed = True
            self._held = bytes(data)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)`` for these limits."""
    return type("GuardedHttpToolsProtocol", (_GuardedProtocol,), {"limits": limits})
