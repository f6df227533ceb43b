"""The server side of a request on granian's RSGI interface: read the body, answer JSON,
stream SSE, report errors.

RSGI is granian's native interface: no per-message dicts to build and parse as ASGI has,
and a whole answer is one call. An RSGI stream ends when the handler returns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian._granian import RSGIProtocolClosed as ProtocolClosed
from granian._granian import RSGIProtocolError as ProtocolError
from granian.rsgi import Scope

from airouter.errors import BodyTooLarge, RequestTimeout, RouterError, error_json
from airouter.sweep import Sweep

__all__ = [
    "SSE_HEADERS", "ClientGone", "Headers", "HTTPProtocol", "ProtocolClosed", "Scope", "closing",
    "read_body", "send_error", "send_json",
]

Headers = list[tuple[str, str]]

_JSON = ("content-type", "application/json")
SSE_HEADERS: Headers = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]


_CLOSE = ("connection", "close")


class _Closing:
    """The protocol of a request served while the worker is replaced: every answer asks the
    client to close the connection after it (and to open its next one to a new worker)."""

    __slots__ = ("_proto",)

    def __init__(self, proto: HTTPProtocol) -> None:
        self._proto = proto

    def __call__(self) -> Awaitable[bytes]:
        return self._proto()

    def __aiter__(self) -> Any:
        return self._proto.__aiter__()

    def client_disconnect(self) -> Awaitable[None]:
        return self._proto.client_disconnect()

    def response_empty(self, status: int, headers: Headers) -> None:
        self._proto.response_empty(status, [*headers, _CLOSE])

    def response_str(self, status: int, headers: Headers, body: str) -> None:
        self._proto.response_str(status, [*headers, _CLOSE], body)

    def response_bytes(self, status: int, headers: Headers, body: bytes) -> None:
        self._proto.response_bytes(status, [*headers, _CLOSE], body)

    def response_stream(self, status: int, headers: Headers) -> Any:
        return self._proto.response_stream(status, [*headers, _CLOSE])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proto, name)


def closing(proto: HTTPProtocol) -> HTTPProtocol:
    return cast(HTTPProtocol, _Closing(proto))


class ClientGone(Exception):
    """The client disconnected before the request body arrived."""


class _Reading:
    __slots__ = ("task", "since", "stall", "timed_out")

    def __init__(self, task: asyncio.Task[object], since: float, stall: float) -> None:
        self.task = task
        self.since = since  # when the last part arrived (or the reading began)
        self.stall = stall
        self.timed_out = False


def _stalled(r: _Reading, now: float) -> bool:
    return now - r.since >= r.stall


def _time_out(r: _Reading) -> None:
    _SWEEP.discard(r)
    r.timed_out = True
    r.task.cancel()


# Bodies still arriving: nginx's client_body_timeout (the limit is between two reads, not on
# the whole body), looked at 4 times per timeout.
_SWEEP: Sweep[_Reading] = Sweep(0.25, _stalled, _time_out)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")


async def read_body(
    proto: HTTPProtocol, limit: int, stall: float | None = None, length: str | None = None
) -> bytes:
    """The whole request body; 413 past `limit` bytes, 408 when nothing arrives for `stall`s.
    `length`: the Content-Length header. Each part read from the server is a wake-up across
    its threads: with the length known, the read that completes the body is the last."""
    want = int(length) if length is not None and length.isdigit() else -1
    if want > limit:
        raise _too_large(limit)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    reading: _Reading | None = None
    if stall is not None and task is not None:
        reading = _Reading(task, loop.time(), stall)
        if stall < 4 * _SWEEP.tick:
            _SWEEP.tick = stall / 4
        _SWEEP.add(reading, loop)
    parts: list[bytes] = []
    size = 0
    chunks = proto.__aiter__()
    try:
        while size != want:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
            if reading is not None:
                reading.since = loop.time()
    except asyncio.CancelledError:
        if reading is None or not reading.timed_out:
            raise
        assert task is not None
        task.uncancel()
        raise RequestTimeout(
            f"The request body did not arrive: nothing was received for {stall:g}s.",
            headers={"Connection": "close"},
        ) from None
    except (ProtocolClosed, ProtocolError) as e:  # the client went away mid-body
        raise ClientGone from e
    finally:
        if reading is not None:
            _SWEEP.discard(reading)
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
