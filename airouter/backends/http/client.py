"""A lean keep-alive HTTP/1.1 client for the upstream leg: one asyncio protocol per
connection, request heads built once per (node, path), a LIFO pool of idle connections per
node, the idle deadline of every response body kept by one sweep per pool (the wait for a
response's head is left to the caller's deadline), and flow control by pausing the socket."""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Mapping
from typing import cast

from airouter.backends.http.coding import CodingError, Decoder
from airouter.backends.http.errors import BadResponse as BadResponse  # re-exported, as these
from airouter.backends.http.errors import ConnectError as ConnectError
from airouter.backends.http.errors import Deadline as Deadline
from airouter.backends.http.errors import Disconnected as Disconnected
from airouter.backends.http.errors import HttpError as HttpError
from airouter.backends.http.origin import Origin as Origin  # re-exported
from airouter.backends.http.parser import ProtocolError, ResponseParser
from airouter.backends.http.proxy import open_connection
from airouter.sweep import Sweep

HIGH_WATER = 256 * 1024  # body bytes buffered before the socket is paused
KEEPALIVE = 15.0  # seconds an idle connection is kept (servers commonly keep 5 to 75)
KEEPALIVE_MARGIN = 1.0  # an idle connection expires this long before the upstream's timeout
IDLE_TICK = 1.0  # how often each pool closes its expired idle connections
# Requests sent again on a fresh connection when a reused one closes before any byte of the
# answer after they were written: those the upstream may run twice (as Go's net/http).
_IDEMPOTENT = (b"GET", b"HEAD", b"OPTIONS", b"TRACE")
_IDEMPOTENCY_KEYS = ("idempotency-key", "x-idempotency-key")


class Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one response at a time."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sweep: Sweep[Connection] | None = None
    ) -> None:
        self.loop = loop
        self.sweep = sweep
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.body: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.error: HttpError | None = None
        self.eof = False  # the current response's body ended
        self.closed = False
        self.lost = False  # connection_lost came
        self.received = False  # any byte of the current response arrived
        self.sent = False  # the current request was handed to the socket
        self.expires = 0.0  # while idle: when the pool closes it
        # The last arrival (or the request); the pool's sweep looks at it, with the exchange's
        # own deadline (`due`: the head's, then the whole answer's; inf when none).
        self.last = 0.0
        self.due = math.inf
        self.whole = math.inf
        self.head_in = False
        self.watched = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes between responses: the connection is out of step
            self.abort()
            return
        self.received = True
        if self.watched:
            self.last = self.loop.time()
        try:
            chunk = parser.feed(data)
        except ProtocolError as e:
            self._fail(BadResponse(str(e)))
            return
        if chunk:
            self.body.append(chunk)
            self.buffered += len(chunk)
            if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
        if parser.complete:
            self.eof = True
        elif not parser.head_done:
            return
        self._wake()

    def eof_received(self) -> bool | None:
        self.closed = True  # not to be reused, even before connection_lost comes
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.lost = True
        self._stop_timer()
        parser = self.parser
        if parser is not None and not self.eof and self.error is None:
            try:
                parser.feed_eof()
            except ProtocolError:
                self.error = Disconnected("the upstream closed the connection mid-response")
            else:
                self.eof = True
        self._wake()

    def pause_writing(self) -> None:
        pass  # request bodies are small and written once

    def resume_writing(self) -> None:
        pass

    # -- the client side
    def _wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    def _fail(self, error: HttpError) -> None:
        if self.error is None:
            self.error = error
        self.abort()
        self._wake()

    def abort(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes, head_request: bool = False, head_due: float = math.inf,
             whole_due: float = math.inf) -> None:
        """Write a request. `head_due`: when the response's head must have come (loop time);
        `whole_due`: when the response must have ended (inf: no deadline)."""
        self.parser = ResponseParser(head_request=head_request)
        self.body = []
        self.buffered = 0
        self.eof = self.received = self.sent = self.head_in = False
        self.error = None
        self.due = head_due
        self.whole = whole_due
        if head_due != math.inf and self.sweep is not None:
            self.watched = True
            self.sweep.add(self, self.loop)
        transport = self.transport
        if transport is None or transport.is_closing() or self.closed:
            raise Disconnected("the upstream closed the connection")
        self.sent = True
        transport.write(data)

    def watch(self) -> None:
        """The response's head is in: from now on the pool's idle timeout bounds every silence
        of the upstream, and the whole answer's deadline replaces the head's."""
        self.head_in = True
        self.due = self.whole
        if self.sweep is not None and not self.eof and not self.closed:
            self.last = self.loop.time()
            if not self.watched:
                self.watched = True
                self.sweep.add(self, self.loop)
        elif self.watched:
            self._stop_timer()

    def expire(self) -> None:
        """A deadline passed (the sweep's call): fail the read that waits for it."""
        if self.eof or self.closed:
            self._stop_timer()
            return
        w = self.waiter
        if w is None or w.done():
            # Not waiting (the consumer is behind, not the upstream), or its reader was
            # cancelled: nobody waits.
            return
        what = "idle"
        if self.loop.time() >= self.due:
            what = "head" if not self.head_in else "whole"
        self.waiter = None
        self.abort()
        w.set_exception(Deadline(what))

    def _stop_timer(self) -> None:
        if self.watched:
            self.watched = False
            assert self.sweep is not None
            self.sweep.discard(self)

    def wait(self) -> asyncio.Future[None]:
        """What the next bytes, the end or a failure complete (a future, not a coroutine: one
        per read of a stream). After it, `check()`."""
        if self.error is not None:
            raise self.error
        if self.lost:
            raise Disconnected("the upstream closed the connection")
        w = self.waiter = self.loop.create_future()
        if self.watched:
            self.last = self.loop.time()
        return w

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self.buffered = 0
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def finished(self) -> bool:
        """The response was read to its end and the connection may carry another."""
        self._stop_timer()
        parser, self.parser = self.parser, None
        if parser is not None:
            parser.release()
        return (not self.closed and self.error is None and parser is not None
                and parser.complete and parser.keep_alive and not self.body)


class Response:
    """What the relay reads from an upstream response: status, headers, `read()`,
    `readany()`, `at_eof()`, `release()` (back to the pool if read to its end) and `close()`."""

    __slots__ = ("status", "headers", "content_type", "_conn", "_pool", "_decoder")

    def __init__(self, conn: Connection, pool: Pool) -> None:
        parser = conn.parser
        assert parser is not None
        self.status = parser.status
        self.headers = parser.headers
        ctype = self.headers.get("content-type", "")
        self.content_type = ctype.partition(";")[0].strip().lower()
        self._conn: Connection | None = conn
        self._pool = pool
        try:
            self._decoder = Decoder.for_coding(self.headers.get("content-encoding", ""))
        except CodingError as e:
            conn.abort()
            raise BadResponse(str(e)) from None

    async def readany(self) -> bytes:
        """The body bytes that arrived next (waiting for some), b"" at the body's end."""
        conn = self._conn
        if conn is None:
            return b""
        while not conn.body:
            if conn.eof:
                return self._flush()
            await conn.wait()
            conn.check()
        data = conn.take()
        if self._decoder is not None:
            try:
                data = self._decoder.decode(data)
            except CodingError as e:
                self.close()
                raise BadResponse(str(e)) from None
        return data

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def _flush(self) -> bytes:
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            try:
                decoder.finish()
            except CodingError as e:
                self.close()
                raise BadResponse(str(e)) from None
        return b""

    def at_eof(self) -> bool:
        conn = self._conn
        return conn is None or (conn.eof and not conn.body)

    def release(self) -> None:
        """Give the connection back if the body was read to its end; close it otherwise."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.put(conn)

    def close(self) -> None:
        """Close the connection at once (an unfinished response, a client gone)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished()
            conn.abort()


class Pool:
    """One node's connections: the idle ones on a LIFO stack (the warmest first)."""

    def __init__(self, origin: Origin, connect_timeout: float, idle_timeout: float | None,
                 max_idle: int, ssl_context: ssl.SSLContext | None = None,
                 shortest_deadline: float | None = None) -> None:
        """`shortest_deadline`: the shortest head or whole-answer deadline callers pass to
        `request` (the sweep looks 8 times within it, as within the idle timeout)."""
        self.origin = origin
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.ssl: ssl.SSLContext | None = None
        if origin.tls:
            self.ssl = ssl_context or ssl.create_default_context()
        self.idle: list[Connection] = []
        # The idle connections' expiry, looked at every IDLE_TICK: closed when due, or closed
        # by the upstream meanwhile.
        self._idle_sweep: Sweep[Connection] = Sweep(
            IDLE_TICK, lambda c, now: c.closed or now >= c.expires, self._expire)
        # Every exchange's deadlines (its head's, its whole answer's, then the idle timeout
        # between reads), looked at 8 times within the shortest: one timer per pool, not one
        # per request.
        t = math.inf if idle_timeout is None else idle_timeout
        tick = min(t, shortest_deadline or math.inf) / 8
        self._sweep: Sweep[Connection] | None = None
        if tick != math.inf:
            self._sweep = Sweep(
                tick, lambda c, now: now >= c.due or (c.head_in and now - c.last >= t),
                Connection.expire)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        sweep = self._sweep
        o = self.origin
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await open_connection(lambda: Connection(loop, sweep), o.host, o.port,
                                             self.ssl, o.proxy)
        except OSError as e:  # refused, unreachable, name unknown, TLS failed, proxy refused
            raise ConnectError(f"{type(e).__name__}: {e}") from None
        return conn

    def _reuse(self) -> Connection | None:
        idle = self.idle
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            self._idle_sweep.discard(conn)
            if not conn.closed and now < conn.expires:
                return conn
            conn.close()
        return None

    def _expire(self, conn: Connection) -> None:
        self._idle_sweep.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        conn.close()

    async def request(self, method: bytes, path: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None, head_due: float = math.inf,
                      whole_due: float = math.inf) -> Response:
        """Send one request and wait for the response's head; the body is read from the
        Response. `head_due` bounds the wait for the head, `whole_due` the whole exchange
        (loop times; Deadline("head"/"whole") past them); from the head on, the pool's idle
        timeout bounds every silence of the upstream until the body's end (Deadline("idle")).
        Connecting has its own connect timeout (TimeoutError)."""
        head = self.origin.head(method, path)
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        if body or method == b"POST":
            data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        else:
            data = head + b"\r\n"
        conn = self._reuse()
        reused = conn is not None
        while True:  # one coroutine for the exchange: at most a second pass, on a fresh one
            if conn is None:
                conn = await self._connect()
            try:
                conn.send(data, method == b"HEAD", min(head_due, whole_due), whole_due)
                parser = conn.parser
                assert parser is not None
                while not parser.head_done:
                    await conn.wait()
                    conn.check()
                conn.watch()
                return Response(conn, self)
            except BaseException as e:
                conn.finished()
                conn.abort()
                # A pooled connection the upstream closed before a byte of the answer: found
                # closed before the request was written (it never saw it), or the request may
                # run twice (idempotent): a fresh connection may carry it. Anything else may
                # already be running upstream: sending it again could run it twice.
                if not (reused and isinstance(e, Disconnected) and not conn.received
                        and (not conn.sent or _replayable(method, headers))):
                    raise
            conn, reused = None, False

    def put(self, conn: Connection) -> None:
        parser = conn.parser
        lifetime = KEEPALIVE
        if parser is not None and "keep-alive" in parser.headers:
            lifetime = keep_alive_lifetime(parser.headers["keep-alive"])
        if conn.finished() and len(self.idle) < self.max_idle and lifetime > 0:
            loop = asyncio.get_running_loop()
            conn.expires = loop.time() + lifetime
            self.idle.append(conn)
            self._idle_sweep.add(conn, loop)
        else:
            conn.abort()

    def close(self) -> None:
        for conn in self.idle:
            self._idle_sweep.discard(conn)
            conn.close()
        self.idle.clear()


def _replayable(method: bytes, headers: Mapping[str, str] | None) -> bool:
    """Whether a request may run twice upstream: idempotent, or it carries a key to dedupe."""
    return method in _IDEMPOTENT or any(k.lower() in _IDEMPOTENCY_KEYS for k in headers or ())


def keep_alive_lifetime(value: str) -> float:
    """How long an idle connection is kept, given a response's `Keep-Alive` field: a margin
    before its `timeout=N`, at most KEEPALIVE; 0 (not kept) after `max=1` or below."""
    lifetime = KEEPALIVE
    for param in value.split(","):
        name, _, number = param.partition("=")
        name = name.strip().lower()
        try:
            n = float(number.strip().strip('"'))
        except ValueError:
            continue
        if name == "timeout" and n >= 0:
            lifetime = min(lifetime, n - KEEPALIVE_MARGIN if n > 2 * KEEPALIVE_MARGIN else n / 2)
        elif name == "max" and n <= 1:
            lifetime = 0.0
    return lifetime
