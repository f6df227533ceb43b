"""Raw ASGI plumbing for the hot path: read the body, send JSON, SSE and errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airouter.errors import BodyTooLarge, RequestTimeout, RouterError, error_json

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_CT = (b"content-type", b"application/json")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientGone(Exception):
    """The client disconnected before the request body arrived."""


async def _next(receive: Receive, stall: float | None) -> Message:
    if stall is None:
        return await receive()
    try:
        async with asyncio.timeout(stall):
            return await receive()
    except TimeoutError:
        # nginx's client_body_timeout: the limit is between two reads, not on the whole body.
        raise RequestTimeout(
            f"The request body did not arrive: nothing was received for {stall:g}s.",
            headers={"Connection": "close"},
        ) from None


async def read_body(receive: Receive, limit: int, stall: float | None = None) -> bytes:
    """The whole request body; 413 past `limit` bytes, 408 when it stalls for `stall`s."""
    msg = await _next(receive, stall)
    if msg["type"] != "http.request":
        raise ClientGone
    body: bytes = msg.get("body", b"")
    if not msg.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        msg = await _next(receive, stall)
        if msg["type"] != "http.request":
            raise ClientGone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    h = [JSON_CT, (b"content-length", str(len(body)).encode())]
    if headers:
        h.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send,
    err: RouterError,
    headers: list[tuple[bytes, bytes]] | None = None,
    render: Callable[[RouterError], bytes] = error_json,
) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    if headers:
        extra.extend(headers)
    await send_json(send, err.status, render(err), extra)
