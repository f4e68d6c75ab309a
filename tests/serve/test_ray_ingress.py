"""`serve --ray`'s ingress answers its protocol errors as plain `serve` does, without a Ray cluster.

The ingress is an ASGI app; these tests call it directly with a scope, a receive and a send, so
the body reader and the method check (shared with `serve/app.py`) are checked on its code path.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from crossinfer.serve.ray_serve import _IngressApp

LIMIT = 1024


class _Handle:
    """A model deployment's handle that must not be reached by these requests."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the request reached the model deployment ({name})")


def _call(
    method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, dict[bytes, bytes], dict[str, Any], int]:
    """(status, headers, JSON body, how many times the app read the request body)."""
    app = _IngressApp({"m": _Handle()}, {}, app_name="test", max_body_bytes=LIMIT)
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, payload = sent
    assert start["type"] == "http.response.start"
    return start["status"], dict(start["headers"]), json.loads(payload["body"]), reads


def test_a_405_names_the_allowed_method_in_allow() -> None:
    status, headers, doc, _ = _call("POST", "/v2/health/live", [])
    assert status == 405
    assert headers[b"allow"] == b"GET"
    assert doc == {"error": "/v2/health/live takes GET, not POST"}


def test_a_405_on_a_post_route_allows_post() -> None:
    status, headers, _, reads = _call("GET", "/v2/repository/index", [])
    assert (status, headers[b"allow"], reads) == (405, b"POST", 0)


def test_an_oversized_content_length_is_refused_before_the_body_is_read() -> None:
    length = str(LIMIT + 1).encode()
    status, headers, doc, reads = _call(
        "POST", "/v2/models/m/infer", [(b"content-length", length)], b"{}"
    )
    assert status == 413
    assert reads == 0  # refused from the header alone
    assert b"allow" not in headers
    assert doc["error"].startswith(f"request body is {LIMIT + 1} bytes, more than the limit")


def test_a_body_over_the_limit_without_a_length_is_refused() -> None:
    status, _, doc, reads = _call("POST", "/v2/models/m/infer", [], b"x" * (LIMIT + 1))
    assert (status, reads) == (413, 1)
    assert "more than the limit of 1024 bytes" in doc["error"]
