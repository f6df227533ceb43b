"""The server side of a request on granian's RSGI interface (`RsgiExchange`): read the body,
answer JSON, stream SSE, report errors.

RSGI is granian's native interface: no per-message dicts to build and parse as ASGI has,
and a whole answer is one call. An RSGI stream ends when the handler returns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

# granian.rsgi's public names (its stubs re-export them without marking them so for mypy).
from granian.rsgi import (  # type: ignore[attr-defined]
    HTTPProtocol,
    ProtocolClosed,
    ProtocolError,
    Scope,
)

from airouter.errors import InvalidRequest, error_json
from airouter.exchange import CLOSE as _CLOSE
from airouter.exchange import (
    BodyParts,
    ClientGone,
    Exchange,
    Headers,
    Render,
    Send,
    body_timeout,
    too_large,
)
from airouter.identity import RequestHeaders
from airouter.sweep import Sweep

__all__ = [
    "HTTPProtocol", "ProtocolClosed", "RsgiExchange", "Scope", "read_body",
]


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


async def _broken(chunks: Any) -> bool:
    """After the first empty part: a second one means the body failed (so do request
    trailers, which granian cannot pass on); the end of the parts, that it was whole."""
    try:
        await chunks.__anext__()
    except StopAsyncIteration:
        return False
    return True


def _incomplete(size: int, want: int) -> InvalidRequest:
    what = (f"{size} of its {want} bytes (Content-Length) arrived" if want >= 0
            else "its chunked encoding is malformed or has no last chunk")
    return InvalidRequest(
        f"The request body is incomplete: {what}.", code="incomplete_body",
        headers={"Connection": "close"},
    )


# granian's HTTP/1 parser refuses a head past its read buffer exactly up to this buffer size;
# a larger buffer is filled in reads that can overshoot it, so past this the head is measured
# here too (request line and header fields as they arrived, give or take the decoded path).
PARSER_EXACT_HEAD = 24576


def head_size(scope: Scope) -> int:
    """The request head's length in bytes, as the client sent it (about)."""
    size = len(scope.method) + len(scope.path) + len(scope.query_string) + 14
    h = scope.headers
    return size + sum(map(len, h.keys())) + sum(map(len, h.values())) + 4 * len(h.keys())


def head_too_large(proto: HTTPProtocol) -> None:
    proto.response_empty(431, [_CLOSE])


async def read_body(
    proto: HTTPProtocol, limit: int, stall: float | None = None, length: str | None = None
) -> bytes:
    """The whole request body; 413 past `limit` bytes, 408 when nothing arrives for `stall`s.
    `length`: the Content-Length header. Each part read from the server is a wake-up across
    its threads: with the length known, the read that completes the body is the last. The
    limit is kept as exchange.BodyParts keeps it (an over-limit body is read through, up to
    twice the limit, before the 413)."""
    body = BodyParts(limit, length)
    want = body.want
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    reading: _Reading | None = None
    if stall is not None and task is not None:
        reading = _Reading(task, loop.time(), stall)
        if stall < 4 * _SWEEP.tick:
            _SWEEP.tick = stall / 4
        _SWEEP.add(reading, loop)
    chunks = proto.__aiter__()
    try:
        while body.size != want:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                chunk = b""
            if not chunk:
                # granian marks the body's end with an empty part, and a body that broke off
                # (shorter than its Content-Length, a bad chunk-size line, no last chunk) with
                # one more before it: an incomplete message is never processed (RFC 9112 §8).
                if want >= 0 or await _broken(chunks):
                    if body.over:
                        raise too_large(limit, close=True)
                    raise _incomplete(body.size, want)
                break
            body.add(chunk)
            if reading is not None:
                reading.since = loop.time()
    except asyncio.CancelledError:
        if reading is None or not reading.timed_out:
            raise
        assert task is not None
        task.uncancel()
        raise body_timeout(stall or 0.0) from None
    except (ProtocolClosed, ProtocolError) as e:  # the client went away mid-body
        raise ClientGone from e
    finally:
        if reading is not None:
            _SWEEP.discard(reading)
    return body.whole()


_NO_PARAMS: dict[str, str] = {}


class RsgiExchange(Exchange):
    """A request on granian's RSGI interface: the server's own calls, unwrapped."""

    __slots__ = ("scope", "proto")
    closed = (ProtocolClosed,)

    def __init__(
        self, scope: Scope, proto: HTTPProtocol, render: Render = error_json,
        params: dict[str, str] | None = None,
    ) -> None:
        self.scope = scope
        self.proto = proto
        self.method = scope.method
        self.path = scope.path
        self.params = params or _NO_PARAMS
        # exchange.begin, written out: this runs for every request.
        self.headers = h = RequestHeaders(scope.headers.get)
        self.rh = [("x-request-id", h.request_id)]
        self.render = render

    def header(self, name: str) -> str | None:
        return self.scope.headers.get(name)  # type: ignore[no-any-return]

    def body(self, limit: int, stall: float | None = None) -> Awaitable[bytes]:
        return read_body(self.proto, limit, stall, self.headers.length)

    def send(self, status: int, body: bytes, headers: Headers) -> None:
        self.proto.response_bytes(status, headers, body)

    def stream(self, status: int, headers: Headers) -> Send:
        return self.proto.response_stream(status, headers).send_bytes

    def client_disconnect(self) -> Awaitable[None]:
        return self.proto.client_disconnect()
