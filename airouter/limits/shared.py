"""Limits shared by the workers of one process group, without Redis.

The main process keeps the counters (engine.Counters) and the nodes' slots (slots.SlotTable)
in a thread of its own and answers the workers over a unix socket: length-prefixed msgpack
frames, pipelined on one connection per worker and purpose. A worker's admission is one local
round trip (tens of microseconds; see bench/micro), and the counters outlive worker restarts
and config reloads. A frame with request id 0 gets no answer (a slot given back)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import threading
from typing import Any

import msgspec

from airouter.backends.node_slots import GRANTED, SlotStore
from airouter.limits.engine import Check, Counters, Engine, Item, Outcome
from airouter.limits.slots import SlotTable

log = logging.getLogger("airouter.limits")
SOCKET_ENV = "AIROUTER_LIMITS_SOCKET"
CALL_TIMEOUT = 1.0  # seconds; then the request is served under limits_on_redis_failure
_HEAD = struct.Struct("!I")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def _dispatch(counters: Counters, op: str, args: list[Any]) -> Any:
    if op == "admit":
        checks = [Check(*c) for c in args[0]]
        o = counters.admit(checks, args[1], args[2])
        return [o.failed, -1.0 if o.wait == float("inf") else o.wait, o.used, o.reset]
    if op == "charge":
        items = [(str(k), str(n), int(a), int(t)) for k, n, a, t in args[0]]
        counters.charge(items, args[1], args[2])
    elif op == "release":
        counters.release(args[0], args[1])
    elif op == "renew":
        counters.renew(args[0], args[1])
    return None


async def _serve_conn(
    counters: Counters, table: SlotTable, reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    owner = object()  # this connection: its worker's slots end with it
    waits: set[asyncio.Task[None]] = set()

    def answer(rid: int, result: Any) -> None:
        if rid and not writer.is_closing():
            body = _encode([rid, result])
            writer.write(_HEAD.pack(len(body)) + body)

    async def queued(rid: int, key: str, lease: str, fut: asyncio.Future[int], t: float) -> None:
        answer(rid, await table.wait(key, lease, fut, t))

    try:
        while True:
            head = await reader.readexactly(4)
            rid, op, args = _decode(await reader.readexactly(_HEAD.unpack(head)[0]))
            try:
                if op == "take":
                    key, limit, max_queue, lease, seconds = args
                    got = table.take(key, limit, max_queue, lease, owner)
                    if isinstance(got, asyncio.Future):
                        task = asyncio.create_task(queued(rid, key, lease, got, seconds))
                        waits.add(task)
                        task.add_done_callback(waits.discard)
                        continue
                    result: Any = got
                elif op == "give":
                    table.give(args[0], args[1])
                    result = None
                else:
                    result = _dispatch(counters, op, args)
            except Exception:  # a malformed frame: answer it, keep the worker's connection
                log.exception("limits: bad request %r", op)
                result = None
            answer(rid, result)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        table.drop(owner)
        writer.close()


def start_server(path: str) -> threading.Thread:
    """Serve counters on `path` from a daemon thread of the calling (main) process."""
    counters = Counters()
    table = SlotTable()
    ready = threading.Event()

    async def main() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.start_unix_server(
            lambda r, w: _serve_conn(counters, table, r, w), path=path
        )
        ready.set()
        async with server:
            await server.serve_forever()

    t = threading.Thread(target=asyncio.run, args=(main(),), name="airouter-limits", daemon=True)
    t.start()
    if not ready.wait(10):
        raise RuntimeError(f"limits server did not start on {path}")
    return t


class _Client:
    """One pipelined connection to the main process's server."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._lock = asyncio.Lock()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is None or self._writer.is_closing():
                reader, self._writer = await asyncio.open_unix_connection(self.path)
                self._reader_task = asyncio.create_task(self._read(reader))
            return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                rid, result = _decode(await reader.readexactly(_HEAD.unpack(head)[0]))
                fut = self._pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(result)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writer = None
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("limits server connection lost"))
            self._pending.clear()

    async def _call(self, op: str, args: list[Any], seconds: float = CALL_TIMEOUT) -> Any:
        writer = self._writer
        if writer is None or writer.is_closing():
            writer = await self._connect()
        self._next += 1
        rid = self._next
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        body = _encode([rid, op, args])
        writer.write(_HEAD.pack(len(body)) + body)
        try:
            async with asyncio.timeout(seconds):
                return await fut
        except TimeoutError:
            raise ConnectionError("the limits server did not answer") from None
        finally:
            self._pending.pop(rid, None)

    def _send(self, op: str, args: list[Any]) -> None:
        """A frame that needs no answer; none when the connection is gone (its slots went
        with it)."""
        writer = self._writer
        if writer is not None and not writer.is_closing():
            body = _encode([0, op, args])
            writer.write(_HEAD.pack(len(body)) + body)

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()


class SharedSlots(_Client, SlotStore):
    """A worker's client of the main process's node slots."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._prefix = os.urandom(6).hex() + ":"
        self._seq = 0

    async def take(
        self, key: str, limit: int, max_queue: int, queue_timeout: float
    ) -> tuple[int, str] | None:
        self._seq += 1
        lease = f"{self._prefix}{self._seq}"
        try:
            got = await self._call(
                "take", [key, limit, max_queue, lease, queue_timeout], queue_timeout + CALL_TIMEOUT
            )
        except OSError:
            self._send("give", [key, lease])
            return None
        except BaseException:  # cancelled: whether queued or just granted, nothing is kept
            self._send("give", [key, lease])
            raise
        return (got, lease) if got == GRANTED else (got, "")

    def give(self, key: str, lease: str) -> None:
        self._send("give", [key, lease])


class SharedEngine(_Client, Engine):
    """A worker's client of the main process's counters."""

    async def admit(self, checks: list[Check], lease: str, dry: bool = False) -> Outcome | None:
        try:
            failed, wait, used, reset = await self._call(
                "admit", [[(c.kind, c.key, c.limit, c.amount, c.ttl) for c in checks], lease, dry]
            )
        except OSError:
            return None
        return Outcome(failed, float("inf") if wait < 0 else wait, used, reset)

    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        with contextlib.suppress(OSError):
            await self._call("charge", [items, release or [], lease])

    async def release(self, keys: list[str], lease: str) -> None:
        with contextlib.suppress(OSError):
            await self._call("release", [keys, lease])

    async def renew(self, keys: list[str], leases: list[str]) -> None:
        with contextlib.suppress(OSError):
            await self._call("renew", [keys, leases])
