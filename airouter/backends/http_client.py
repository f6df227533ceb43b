"""A lean keep-alive HTTP/1.1 client for the upstream leg: one asyncio protocol per
connection, request heads built once per (node, path), a LIFO pool of idle connections per
node, the idle deadline of every response body kept by one sweep per pool (the wait for a
response's head is left to the caller's deadline), and flow control by pausing the socket."""

from __future__ import annotations

import asyncio
import base64
import ssl
import zlib
from collections.abc import Mapping
from typing import cast
from urllib.parse import unquote, urlsplit

from airouter.backends.proxy import open_connection
from airouter.streaming.http1 import ProtocolError, ResponseParser
from airouter.sweep import Sweep
from airouter.upstream import Proxy, quoted_path, quoted_query

HIGH_WATER = 256 * 1024  # body bytes buffered before the socket is paused
KEEPALIVE = 15.0  # seconds an idle connection is kept (servers commonly keep 5 to 75)


class HttpError(Exception):
    """The upstream's connection failed (refused, reset, closed early, not HTTP)."""


class ConnectError(HttpError):
    """No connection could be made: nothing was sent."""


class Disconnected(HttpError):
    """The connection closed before the response was whole."""


class BadResponse(HttpError):
    """The upstream's bytes are not a well-formed HTTP/1.x response."""


class Origin:
    """One node's address and the request heads for it, made once."""

    def __init__(self, base_url: str, headers: Mapping[str, str],
                 proxy: Proxy | None = None) -> None:
        u = urlsplit(base_url)
        self.tls = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.tls else 80)
        self.proxy = proxy
        default = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        host = self.host if ":" not in self.host else f"[{self.host}]"
        authority = host if default else f"{host}:{self.port}"
        # The base URL's path (percent-encoded) before each request's path, its query after;
        # a plain-HTTP request to a proxy names the whole URL (absolute-form).
        self.prefix = quoted_path(u.path.rstrip("/"))
        if proxy is not None and not self.tls:
            self.prefix = f"http://{authority}{self.prefix}"
        self.query = "?" + quoted_query(u.query) if u.query else ""
        fields = {"Host": authority, "Accept-Encoding": "identity", **headers}
        if u.username is not None and not any(k.lower() == "authorization" for k in fields):
            basic = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
            fields["Authorization"] = "Basic " + base64.b64encode(basic).decode()
        if proxy is not None and not self.tls and proxy.authorization is not None:
            fields["Proxy-Authorization"] = proxy.authorization
        self.fields = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode("latin-1")
        self._heads: dict[tuple[bytes, str], bytes] = {}

    def head(self, method: bytes, path: str) -> bytes:
        """`METHOD /path HTTP/1.1` and the fixed fields, up to (not including) the variable
        ones; cached per path."""
        key = (method, path)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = (
                method + b" " + (self.prefix + path + self.query).encode() + b" HTTP/1.1\r\n"
                + self.fields
            )
        return head


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
        self.idle_since = 0.0
        # The last arrival (or the request); the pool's sweep looks at it.
        self.last = 0.0
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
        if parser is not None and not self.eof:
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

    def send(self, data: bytes, head_request: bool = False) -> None:
        self.parser = ResponseParser(head_request=head_request)
        self.body = []
        self.buffered = 0
        self.eof = self.received = False
        self.error = None
        transport = self.transport
        if transport is None or transport.is_closing():
            raise Disconnected("the upstream closed the connection")
        transport.write(data)

    def watch(self) -> None:
        """The response's head is in: from now on the pool's idle timeout bounds every silence
        of the upstream (the wait for the head is the caller's first-token deadline)."""
        if self.sweep is not None and not self.eof and not self.closed:
            self.last = self.loop.time()
            self.watched = True
            self.sweep.add(self, self.loop)

    def expire(self) -> None:
        """The idle deadline passed (the sweep's call): fail the read that waits for it."""
        if self.eof or self.closed:
            self._stop_timer()
            return
        w = self.waiter
        if w is None or w.done():
            # Not waiting (the consumer is behind, not the upstream), or its reader was
            # cancelled: nobody waits.
            return
        self.waiter = None
        self.abort()
        w.set_exception(TimeoutError())

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
        parser = self.parser
        self.parser = None
        return (not self.closed and self.error is None and parser is not None
                and parser.complete and parser.keep_alive and not self.body)


class Response:
    """What the relay reads from an upstream response: status, headers, `read()`,
    `readany()`, `at_eof()`, `release()` (back to the pool if read to its end) and `close()`."""

    __slots__ = ("status", "headers", "content_type", "_conn", "_pool", "_inflate")

    def __init__(self, conn: Connection, pool: Pool) -> None:
        parser = conn.parser
        assert parser is not None
        self.status = parser.status
        self.headers = parser.headers
        ctype = self.headers.get("content-type", "")
        self.content_type = ctype.partition(";")[0].strip().lower()
        self._conn: Connection | None = conn
        self._pool = pool
        coding = self.headers.get("content-encoding", "identity").strip().lower()
        self._inflate: zlib._Decompress | None = None
        if coding in ("gzip", "x-gzip"):
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._inflate = zlib.decompressobj()
        elif coding not in ("identity", ""):
            conn.abort()
            raise BadResponse(f"unsupported content-coding {coding!r}")

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
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error as e:
                raise BadResponse("a malformed compressed body") from e
        return data

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def _flush(self) -> bytes:
        inflate = self._inflate
        if inflate is None:
            return b""
        self._inflate = None
        try:
            return inflate.flush()
        except zlib.error as e:
            raise BadResponse("a malformed compressed body") from e

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
                 max_idle: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.origin = origin
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.ssl: ssl.SSLContext | None = None
        if origin.tls:
            self.ssl = ssl_context or ssl.create_default_context()
        self.idle: list[Connection] = []
        # Every response's idle deadline, looked at 8 times per timeout.
        self._sweep: Sweep[Connection] | None = None
        if idle_timeout is not None:
            t = idle_timeout
            self._sweep = Sweep(t / 8, lambda c, now: now - c.last >= t, Connection.expire)

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
            if not conn.closed and now - conn.idle_since < KEEPALIVE:
                return conn
            conn.close()
        return None

    async def request(self, method: bytes, path: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None) -> Response:
        """Send one request and wait for the response's head; the body is read from the
        Response. Nothing here bounds the wait for the head but the connect timeout: the
        caller's deadline does (`asyncio.timeout`); from the head on, the pool's idle timeout
        bounds every silence of the upstream until the body's end."""
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
                conn.send(data, head_request=method == b"HEAD")
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
                # A pooled connection the upstream closed as we sent on it, before a byte of
                # the answer: it never saw the request, so a fresh connection may carry it.
                if not (reused and isinstance(e, Disconnected) and not conn.received):
                    raise
            conn, reused = None, False

    def put(self, conn: Connection) -> None:
        if conn.finished() and len(self.idle) < self.max_idle:
            conn.idle_since = asyncio.get_running_loop().time()
            self.idle.append(conn)
        else:
            conn.abort()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
