"""The one Redis connection of the limits package (the counters, redis_engine, and the node
slots, node_redis): commands written to the socket at once (pipelined), replies parsed by
hiredis's reader and handed to callbacks in the order the commands went out. A store sends one
script call per batch of requests, so a client library's pools, locks and per-command
coroutines would cost more than the call itself.

Anything that makes the stream untrustworthy closes the connection, and the callbacks still
waiting get the error: a malformed reply (hiredis rejects it; nesting is bounded), a reply
nobody asked for, and an answer saying this server no longer takes writes (READONLY from a
demoted primary, LOADING, MASTERDOWN, MOVED...). The owner then counts Redis as down and
connects again, which reaches the new primary once the failover is over."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from airouter.config import redis_database

Reply = Any  # bytes, int, None, list, ... or ReplyError / OSError for a failure
_INCOMPLETE = object()
# Error replies that say this connection no longer reaches a primary that takes writes.
UNUSABLE = frozenset({"READONLY", "LOADING", "MASTERDOWN", "MOVED", "ASK", "CLUSTERDOWN"})
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_FALSE = ("0", "F", "FALSE", "N", "NO", "OFF")  # redis-py's to_bool


class ReplyError(Exception):
    """An error reply (`-ERR ...`, `-NOSCRIPT ...`)."""


class ProtocolError(ConnectionError):
    """Bytes that are not a reply the connection waits for: the connection is dropped."""


class Unusable(ConnectionError):
    """The server answered that it takes no writes here (a replica now, loading, ...)."""


def safe_url(url: str) -> str:
    """A Redis URL as it may be logged: without user or password."""
    p = urlsplit(url)
    if p.scheme == "unix":
        return f"unix://{p.path}"
    return f"{p.scheme}://{p.hostname or ''}:{p.port or 6379}{p.path}"


def command(*args: bytes) -> bytes:
    """One command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n" % len(a))
        parts.append(a)
        parts.append(b"\r\n")
    return b"".join(parts)


def reader() -> hiredis.Reader:
    return hiredis.Reader(
        protocolError=ProtocolError, replyError=ReplyError, notEnoughData=_INCOMPLETE
    )


class Connection(asyncio.Protocol):
    """One socket to Redis. `send` writes a command and queues the callback for its reply."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reader = reader()
        self._waiting: deque[Callable[[Reply], None]] = deque()
        self.error: BaseException | None = None  # why it closed, given to waiting callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return  # closing: nothing after the fault can be trusted
        r = self._reader
        waiting = self._waiting
        try:
            r.feed(data)
            while (reply := r.gets()) is not _INCOMPLETE:
                if type(reply) is ReplyError:
                    code = str(reply).split(" ", 1)[0]
                    if code in UNUSABLE:
                        raise Unusable(str(reply))
                if not waiting:
                    raise ProtocolError("a reply nobody asked for")
                waiting.popleft()(reply)
        except (ProtocolError, Unusable) as e:
            self.close(e)
        except Exception as e:  # hiredis's own failures (a reply it cannot build)
            self.close(ProtocolError(f"{type(e).__name__}: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail_waiting(self.error or exc or ConnectionError("Redis closed the connection"))

    def _fail_waiting(self, err: BaseException) -> None:
        waiting, self._waiting = self._waiting, deque()
        for callback in waiting:
            callback(err)

    def send(self, cmd: bytes, callback: Callable[[Reply], None]) -> None:
        if self.transport is None or self.error is not None:
            callback(self.error or ConnectionError("not connected to Redis"))
            return
        self.transport.write(cmd)
        self._waiting.append(callback)

    def call(self, *args: bytes) -> asyncio.Future[Reply]:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def done(reply: Reply) -> None:
            if not fut.done():
                fut.set_result(reply)

        self.send(command(*args), done)
        return fut

    @property
    def usable(self) -> bool:
        return self.transport is not None and self.error is None

    def close(self, error: BaseException | None = None) -> None:
        """Drop the connection; replies still owed are failed with `error` (at once: a TLS
        transport reports its loss later)."""
        if error is not None and self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()
        if self.error is not None:
            self._fail_waiting(self.error)


async def checked(fut: asyncio.Future[Reply]) -> Reply:
    reply = await fut
    if isinstance(reply, BaseException):
        raise reply
    return reply


def _query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


def tls_context(url: str) -> ssl.SSLContext | None:
    """For rediss://, the TLS context that redis-py builds from the URL's query: ssl_cert_reqs
    (none, optional, required: the default), ssl_ca_certs, ssl_certfile, ssl_keyfile,
    ssl_check_hostname (default true; off when no certificate is required). ValueError for an
    option it cannot use, OSError for a file it cannot read."""
    if urlsplit(url).scheme != "rediss":
        return None
    q = _query(url)
    reqs = q.get("ssl_cert_reqs", "required").lower()
    if reqs not in CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    ctx = ssl.create_default_context()
    check = q.get("ssl_check_hostname", "").upper() not in _FALSE
    ctx.check_hostname = check and CERT_REQS[reqs] != ssl.CERT_NONE
    ctx.verify_mode = CERT_REQS[reqs]
    if q.get("ssl_certfile"):
        ctx.load_cert_chain(q["ssl_certfile"], q.get("ssl_keyfile") or None)
    if q.get("ssl_ca_certs"):
        ctx.load_verify_locations(q["ssl_ca_certs"])
    return ctx


async def connect(url: str, preload: bytes = b"") -> Connection:
    """Open `url` (redis://, rediss:// or unix:///path/to/redis.sock, with user, password,
    database and TLS options as redis-py reads them), authenticate, select the database and
    load the script `preload`."""
    p = urlsplit(url)
    query = _query(url)
    loop = asyncio.get_running_loop()
    conn: Connection
    db = redis_database(p)
    if p.scheme == "unix":
        _, conn = await loop.create_unix_connection(Connection, unquote(p.path))
    else:
        host = p.hostname or "localhost"
        ctx = tls_context(url)
        _, conn = await loop.create_connection(
            Connection, host, p.port or 6379, ssl=ctx,
            server_hostname=host if ctx is not None else None,
        )
    try:
        # userinfo is percent-encoded; parse_qs has already decoded the query's
        password = query.get("password")
        if p.password is not None:
            password = unquote(p.password)
        username = unquote(p.username) if p.username else query.get("username")
        if password:  # an empty one is none, as redis-py reads it
            auth = [password.encode()]
            if username:
                auth.insert(0, username.encode())
            await checked(conn.call(b"AUTH", *auth))
        if db and int(db):  # "03" is database 3, as redis-py reads it
            await checked(conn.call(b"SELECT", str(int(db)).encode()))
        if preload:
            await checked(conn.call(b"SCRIPT", b"LOAD", preload))
    except BaseException:
        conn.close()
        raise
    return conn
