"""One request as the endpoints see it: its head, its body, the answer (whole or streamed),
the client leaving. Two implementations serve it: RSGI (`airouter.rsgi`, the default) and ASGI
(`airouter.asgi_io`); endpoints, limits, routing and backends do not know which one does.

The state a request's handling carries (its id, the headers every answer echoes, its access
record, the error shape of its API) lives here too, instead of being passed from method to
method."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from airouter.errors import BodyTooLarge, RequestTimeout, RouterError

if TYPE_CHECKING:
    from airouter.auth import ClientKey
    from airouter.disconnect import DisconnectWatch
    from airouter.doors.door import Renderer
    from airouter.identity import RequestHeaders
    from airouter.limits import Ticket
    from airouter.observability.record import Record

Headers = list[tuple[str, str]]
Render = Callable[[RouterError], bytes]
# Sends one part of a streamed answer; raises StreamClosed once the client is gone.
Send = Callable[[bytes], Awaitable[None]]

JSON = ("content-type", "application/json")
CLOSE = ("connection", "close")
SSE_HEADERS: Headers = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]


class ClientGone(Exception):
    """The client disconnected before the request body arrived."""


class StreamClosed(Exception):
    """A part of a streamed answer could not be sent: the client is gone."""


class Exchange(ABC):
    """A request being served. `rh` are the headers every answer to it carries (the request id
    first); `render` turns an error into its API's error body. The rest is set as the
    request's handling learns it: its access record, the caller's key, the admission ticket,
    how the answer is rendered, the disconnect watch."""

    __slots__ = ("method", "path", "params", "headers", "rh", "render", "record", "key",
                 "ticket", "renderer", "watch")

    # What a streamed answer's send raises once the client is gone (`except x.closed:`): the
    # server's own exception where it has one, so no part is wrapped to translate it.
    closed: tuple[type[Exception], ...] = (StreamClosed,)

    method: str
    path: str  # the route's path (within any mount), decoded
    params: dict[str, str]  # the route's path parameters
    headers: RequestHeaders
    rh: Headers
    render: Render
    record: Record
    key: ClientKey
    ticket: Ticket
    renderer: Renderer
    watch: DisconnectWatch

    @abstractmethod
    def header(self, name: str) -> str | None:
        """A request header's value (the first, when there are several); `name` in lower case."""

    @abstractmethod
    def body(self, limit: int, stall: float | None = None) -> Awaitable[bytes]:
        """The whole request body: BodyTooLarge past `limit` bytes, RequestTimeout when
        nothing arrives for `stall` seconds, ClientGone when the client leaves first."""

    @abstractmethod
    def send(self, status: int, body: bytes, headers: Headers) -> None:
        """The whole answer, with exactly these headers."""

    @abstractmethod
    def stream(self, status: int, headers: Headers) -> Send:
        """Start a streamed answer with exactly these headers; it ends when the endpoint
        returns."""

    @abstractmethod
    def client_disconnect(self) -> Awaitable[None]:
        """Done when the client goes away (after the body was read)."""

    def send_json(self, status: int, body: bytes) -> None:
        """A JSON answer, with the headers every answer to this request carries."""
        self.send(status, body, [JSON, *self.rh])

    def send_error(self, err: RouterError) -> None:
        """`err` in the request's API's error shape, with the answer's headers and its own."""
        headers = [JSON, *self.rh]
        if err.headers:
            headers.extend((k.lower(), v) for k, v in err.headers.items())
        self.send(err.status, self.render(err), headers)

    def send_sse(self) -> Send:
        """Start an SSE stream, with the headers every answer to this request carries."""
        return self.stream(200, [*SSE_HEADERS, *self.rh])


def begin(x: Exchange, headers: RequestHeaders, render: Render) -> None:
    """The state every exchange starts from: the request's headers, the id its answers echo."""
    x.headers = headers
    x.rh = [("x-request-id", headers.request_id)]
    x.render = render


class BodyParts:
    """A request body as its parts arrive, within `limit` bytes. A body over the limit is read
    through and dropped, up to twice the limit, before the 413 (as nginx discards one): a
    client still sending it would otherwise meet a closed connection instead of the answer.
    Past that, or declared past it (`length`, the Content-Length header), the 413 closes the
    connection at once."""

    __slots__ = ("limit", "want", "size", "over", "parts")

    def __init__(self, limit: int, length: str | None) -> None:
        want = int(length) if length is not None and length.isdigit() else -1
        if want > 2 * limit:
            raise too_large(limit, close=True)
        self.limit = limit
        self.want = want  # the declared length, -1 when none
        self.size = 0
        self.over = want > limit
        self.parts: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        self.size = size = self.size + len(chunk)
        if size > self.limit:
            if size > 2 * self.limit:
                raise too_large(self.limit, close=True)
            self.over = True
            self.parts.clear()
        if chunk and not self.over:
            self.parts.append(chunk)

    def whole(self) -> bytes:
        if self.over:
            raise too_large(self.limit)
        parts = self.parts
        return parts[0] if len(parts) == 1 else b"".join(parts)


def too_large(limit: int, close: bool = False) -> BodyTooLarge:
    return BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.",
                        headers={"Connection": "close"} if close else None)


def body_timeout(stall: float) -> RequestTimeout:
    return RequestTimeout(
        f"The request body did not arrive: nothing was received for {stall:g}s.",
        headers={"Connection": "close"},
    )
