"""The server side of a request on granian's RSGI interface: read the body, answer JSON,
stream SSE, report errors.

RSGI is granian's native interface: no per-message dicts to build and parse as ASGI has,
and a whole answer is one call. An RSGI stream ends when the handler returns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian._granian import RSGIProtocolClosed as ProtocolClosed
from granian._granian import RSGIProtocolError as ProtocolError
from granian.rsgi import Scope

from airouter.errors import BodyTooLarge, RequestTimeout, RouterError, error_json

__all__ = [
    "SSE_HEADERS", "ClientGone", "Headers", "HTTPProtocol", "ProtocolClosed", "Scope", "read_body",
    "send_error", "send_json",
]

Headers = list[tuple[str, str]]

_JSON = ("content-type", "application/json")
SSE_HEADERS: Headers = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]


class ClientGone(Exception):
    """The client disconnected before the request body arrived."""


async def read_body(proto: HTTPProtocol, limit: int, stall: float | None = None) -> bytes:
    """The whole request body; 413 past `limit` bytes, 408 when it stalls for `stall`s."""
    parts: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    try:
        # nginx's client_body_timeout: the limit is between two reads, not on the whole body.
        async with asyncio.timeout(None if stall is None else loop.time() + stall) as deadline:
            async for chunk in proto:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")
                parts.append(chunk)
                if stall is not None:
                    deadline.reschedule(loop.time() + stall)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive: nothing was received for {stall:g}s.",
            headers={"Connection": "close"},
        ) from None
    except (ProtocolClosed, ProtocolError) as e:  # the client went away mid-body
        raise ClientGone from e
    return parts[0] if len(parts) == 1 else b"".join(parts)


def send_json(
    proto: HTTPProtocol, status: int, body: bytes, headers: Headers | None = None
) -> None:
    proto.response_bytes(status, [_JSON, *headers] if headers else [_JSON], body)


def send_error(
    proto: HTTPProtocol,
    err: RouterError,
    headers: Headers | None = None,
    render: Callable[[RouterError], bytes] = error_json,
) -> None:
    extra = [(k.lower(), v) for k, v in err.headers.items()]
    if headers:
        extra.extend(headers)
    send_json(proto, err.status, render(err), extra)
