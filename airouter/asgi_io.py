"""The server side of a request on the ASGI interface (`AsgiExchange`): the same exchange the
RSGI one is, over ASGI's receive and send.

A whole answer is sent by a task started at once (the endpoints answer without waiting, as
RSGI lets them); a streamed one ends with the empty last part when the endpoint returns. Both
are seen through by `finish`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airouter.exchange import (
    BodyParts,
    ClientGone,
    Exchange,
    Headers,
    Render,
    Send,
    StreamClosed,
    begin,
    body_timeout,
)
from airouter.identity import RequestHeaders

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
AsgiSend = Callable[[Message], Awaitable[None]]

# What the ASGI servers raise when a send finds the client gone: uvicorn's ClientDisconnected
# is an OSError; granian's own exception is a RuntimeError's kind.
_SEND_FAILED = (OSError, RuntimeError)


def route_path(scope: MutableMapping[str, Any]) -> str:
    """The path within the app it is mounted in (Starlette's Mount sets `root_path`)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def _raw(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class AsgiExchange(Exchange):
    __slots__ = ("_receive", "_send", "_fields", "_whole", "_start", "_streaming", "gone")

    def __init__(
        self, scope: MutableMapping[str, Any], receive: Receive, send: AsgiSend, render: Render
    ) -> None:
        self._receive = receive
        self._send = send
        fields: dict[str, str] = {}
        for name, value in scope["headers"]:
            fields.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        self._fields = fields
        self._whole: asyncio.Task[None] | None = None
        self._start: Message | None = None
        self._streaming = False
        self.gone = False
        self.method = scope["method"]
        self.path = route_path(scope)
        self.params = {k: str(v) for k, v in scope.get("path_params", {}).items()}
        begin(self, RequestHeaders(fields.get), render)

    def header(self, name: str) -> str | None:
        return self._fields.get(name)

    async def _next(self, stall: float | None) -> Message:
        if stall is None:
            return await self._receive()
        try:
            return await asyncio.wait_for(self._receive(), stall)
        except TimeoutError:
            raise body_timeout(stall) from None

    async def body(self, limit: int, stall: float | None = None) -> bytes:
        body = BodyParts(limit, self.headers.length)
        while True:
            message = await self._next(stall)
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone
            body.add(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return body.whole()

    def send(self, status: int, body: bytes, headers: Headers) -> None:
        self._whole = asyncio.ensure_future(self._send_whole(status, body, headers))

    async def _send_whole(self, status: int, body: bytes, headers: Headers) -> None:
        await self._send({"type": "http.response.start", "status": status,
                          "headers": _raw(headers)})
        await self._send({"type": "http.response.body", "body": body})

    def stream(self, status: int, headers: Headers) -> Send:
        # The head goes out with the first part: ASGI's sends are awaited, this call is not.
        self._start = {"type": "http.response.start", "status": status,
                       "headers": _raw(headers)}
        self._streaming = True
        return self._send_part

    async def _send_part(self, data: bytes) -> None:
        try:
            start = self._start
            if start is not None:
                self._start = None
                await self._send(start)
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        except _SEND_FAILED as e:
            self.gone = True
            raise StreamClosed from e

    async def client_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True

    async def finish(self) -> None:
        """See the answer out: a whole one's send, or a stream's last part."""
        if self._whole is not None:
            with contextlib.suppress(*_SEND_FAILED):
                await self._whole
        elif self._streaming and not self.gone:
            with contextlib.suppress(*_SEND_FAILED, StreamClosed):
                if self._start is not None:  # a stream that sent nothing yet
                    await self._send_part(b"")
                await self._send({"type": "http.response.body", "body": b""})
