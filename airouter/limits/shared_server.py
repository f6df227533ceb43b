"""The main process's side of limits.shared: a thread of its own, with its own uvloop, that
keeps the counters (engine.Counters) and the nodes' slots (slots.SlotTable) and answers each
worker's connection, one frame of results per frame of ops, in order (the protocol is
described in limits.shared)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable
from typing import Any, cast

import uvloop

from airouter.limits.engine import Check, Counters, Outcome, Spec
from airouter.limits.shared import HEAD, QUEUED, encode, read_frames
from airouter.limits.slots import SlotTable

log = logging.getLogger("airouter.limits")


class _Server(asyncio.Protocol):
    """One worker's connection: its ops run in order, a batch's answers go in one write."""

    def __init__(self, counters: Counters, table: SlotTable) -> None:
        self.counters = counters
        self.table = table
        self.owner = object()  # this connection: its worker's slots end with it
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.waits: set[asyncio.Task[None]] = set()
        self.specs: dict[int, Spec] = {}  # the Specs this connection defined, by number
        self.run: dict[str, Callable[[list[Any]], Any]] = {
            "A": self._admit, "P": self._admit_spec, "C": self._charge, "Q": self._charge_spec,
            "L": self._release, "R": self._renew, "T": self._take, "G": self._give,
            "N": lambda op: None,
        }

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.drop(self.owner)
        for task in list(self.waits):
            task.cancel()

    def data_received(self, data: bytes) -> None:
        frames, self.buf = read_frames(self.buf + data if self.buf else data)
        out: list[bytes] = []
        run = self.run
        for answer, ops, specs, forget in frames:
            if forget:
                self.specs.clear()
            for number, flat in specs.items():
                self.specs[number] = Spec([Check(*flat[i:i + 5]) for i in range(0, len(flat), 5)])
            results = []
            for op in ops:
                try:
                    results.append(run[op[0]](op))
                except Exception:  # a malformed op: answer it, keep the worker's connection
                    log.exception("limits: bad request %r", op[:1])
                    results.append(None)
            if answer:
                body = encode([0, results])
                out += (HEAD.pack(len(body)), body)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _admit(self, op: list[Any]) -> list[Any]:
        # Each check unpacks as a Check would.
        return _answer(self.counters.admit(op[3], op[2], op[1]))

    def _admit_spec(self, op: list[Any]) -> list[Any]:
        _, number, prompt, lease = op
        return _answer(self.counters.admit(self.specs[number].checks, lease, False, prompt))

    def _charge(self, op: list[Any]) -> None:
        self.counters.charge(op[1], op[2], op[3])

    def _charge_spec(self, op: list[Any]) -> None:
        _, number, tokens, lease, release = op
        spec = self.specs[number]
        if release and spec.lease_keys:
            self.counters.release(spec.lease_keys, lease)
        if tokens and spec.charges:
            self.counters.charge(spec.items(tokens))

    def _release(self, op: list[Any]) -> None:
        self.counters.release(op[1], op[2])

    def _renew(self, op: list[Any]) -> None:
        self.counters.renew(op[1], op[2])

    def _give(self, op: list[Any]) -> None:
        self.table.give(op[1], op[2])

    def _take(self, op: list[Any]) -> int | str:
        _, key, limit, max_queue, lease, seconds, token = op
        got = self.table.take(key, limit, max_queue, lease, self.owner)
        if not isinstance(got, asyncio.Future):
            return got
        task = asyncio.create_task(self._queued(key, lease, got, seconds, token))
        self.waits.add(task)
        task.add_done_callback(self.waits.discard)
        return QUEUED

    async def _queued(
        self, key: str, lease: str, fut: asyncio.Future[int], seconds: float, token: int
    ) -> None:
        result = await self.table.wait(key, lease, fut, seconds)
        if self.transport is not None and not self.transport.is_closing():
            body = encode([1, token, result])
            self.transport.write(HEAD.pack(len(body)) + body)


def _answer(o: Outcome) -> list[Any]:
    """An admission's answer as a frame carries it: [failed, wait (-1: never), used, reset]."""
    return [o.failed, -1.0 if o.wait == math.inf else o.wait, o.used, o.reset]


def start_server(path: str) -> threading.Thread:
    """Serve counters on `path` from a daemon thread of the calling (main) process."""
    counters = Counters()
    table = SlotTable()
    ready = threading.Event()

    async def main() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _Server(counters, table), path=path)
        ready.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        # Each wake-up of this thread is CPU taken from workers that share its core: uvloop
        # makes one cheaper than asyncio's own loop.
        loop = uvloop.new_event_loop()
        loop.run_until_complete(main())

    t = threading.Thread(target=run, name="airouter-limits", daemon=True)
    t.start()
    if not ready.wait(10):
        raise RuntimeError(f"limits server did not start on {path}")
    return t
