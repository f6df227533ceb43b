"""A Redis connection as small as the limits store needs: commands written to the socket at
once (pipelined), replies parsed straight off it and handed to callbacks in the order the
commands went out. The store sends one script call per batch of requests, so a client
library's pools, locks and per-command coroutines would cost more than the call itself."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from airouter.config import redis_database

Reply = Any  # bytes, str, int, None, list, or ReplyError / OSError for a failure
_INCOMPLETE = object()


class ReplyError(Exception):
    """An error reply (`-ERR ...`, `-NOSCRIPT ...`)."""


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


def _parse(buf: bytes | bytearray, pos: int) -> tuple[Reply, int]:
    """One reply from `pos`: (reply, position after it), or (_INCOMPLETE, pos)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    line = buf[pos + 1:end]
    if kind == 36:  # $ bulk string
        n = int(line)
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            return _INCOMPLETE, pos
        return bytes(buf[end + 2:stop]), stop + 2
    if kind == 43:  # + simple string
        return bytes(line).decode(), end + 2
    if kind == 58:  # : integer
        return int(line), end + 2
    if kind == 45:  # - error
        return ReplyError(bytes(line).decode(errors="replace")), end + 2
    if kind == 42:  # * array
        n = int(line)
        if n < 0:
            return None, end + 2
        items: list[Reply] = []
        at = end + 2
        for _ in range(n):
            item, nxt = _parse(buf, at)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
            at = nxt
        return items, at
    raise ReplyError(f"unexpected reply type {chr(kind)!r}")


class Connection(asyncio.Protocol):
    """One socket to Redis. `send` writes a command and queues the callback for its reply."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiting: deque[Callable[[Reply], None]] = deque()
        self.error: BaseException | None = None  # why it closed, given to waiting callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        pos, size = 0, len(data)
        waiting = self._waiting
        try:
            while pos < size:
                reply, pos = _parse(data, pos)
                if reply is _INCOMPLETE:
                    break
                if not waiting:
                    raise ReplyError("a reply nobody asked for")
                waiting.popleft()(reply)
        except (ReplyError, ValueError) as e:  # a garbled stream: nothing after it can be trusted
            self.close(e)
            return
        if pos < size:
            buf += data[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        err = self.error or exc or ConnectionError("Redis closed the connection")
        waiting, self._waiting = self._waiting, deque()
        for callback in waiting:
            callback(err)

    def send(self, cmd: bytes, callback: Callable[[Reply], None]) -> None:
        if self.transport is None:
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

    def close(self, error: BaseException | None = None) -> None:
        """Drop the connection; replies still owed are failed with `error`."""
        if error is not None and self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()


async def _checked(fut: asyncio.Future[Reply]) -> Reply:
    reply = await fut
    if isinstance(reply, BaseException):
        raise reply
    return reply


async def connect(url: str, preload: bytes = b"") -> Connection:
    """Open `url` (redis://, rediss:// or unix:///path/to/redis.sock, with user, password and
    database as redis-py reads them), authenticate, select the database and load the script
    `preload`."""
    p = urlsplit(url)
    query = parse_qs(p.query)
    loop = asyncio.get_running_loop()
    conn: Connection
    db = redis_database(p)
    if p.scheme == "unix":
        _, conn = await loop.create_unix_connection(Connection, unquote(p.path))
    else:
        ctx = ssl.create_default_context() if p.scheme == "rediss" else None
        _, conn = await loop.create_connection(
            Connection, p.hostname or "localhost", p.port or 6379, ssl=ctx
        )
    try:
        # userinfo is percent-encoded; parse_qs has already decoded the query's
        password = query.get("password", [None])[0]
        if p.password is not None:
            password = unquote(p.password)
        username = unquote(p.username) if p.username else query.get("username", [None])[0]
        if password:  # an empty one is none, as redis-py reads it
            auth = [password.encode()]
            if username:
                auth.insert(0, username.encode())
            await _checked(conn.call(b"AUTH", *auth))
        if db and int(db):  # "03" is database 3, as redis-py reads it
            await _checked(conn.call(b"SELECT", str(int(db)).encode()))
        if preload:
            await _checked(conn.call(b"SCRIPT", b"LOAD", preload))
    except BaseException:
        conn.close()
        raise
    return conn
