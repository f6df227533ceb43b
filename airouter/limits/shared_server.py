"""The main process's side of limits.shared: a thread of its own, with its own uvloop, that
keeps the counters (engine.Counters) and the nodes' slots (slots.SlotTable) and answers each
worker's connection, one frame of results per frame of ops, in order (the protocol is
described in limits.shared)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from typing import Any, cast

import msgspec

from airouter.frames import split
from airouter.limits.engine import Check, Counters, Outcome, Spec
from airouter.limits.slots import SlotTable
from airouter.limits.wire import (
    QUEUED,
    Admit,
    AdmitSpec,
    Answers,
    Charge,
    ChargeSpec,
    Frame,
    Give,
    Later,
    Nothing,
    Op,
    Release,
    Renew,
    Take,
    decode_frame,
    decode_op,
    decode_raw_frame,
    framed,
)
from airouter.local_server import serve_unix

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
        self.run: dict[type, Callable[[Any], Any]] = {
            Admit: self._admit, AdmitSpec: self._admit_spec, Charge: self._charge,
            ChargeSpec: self._charge_spec, Release: self._release, Renew: self._renew,
            Take: self._take, Give: self._give, Nothing: lambda op: None,
        }

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.drop(self.owner)
        for task in list(self.waits):
            task.cancel()

    def data_received(self, data: bytes) -> None:
        bodies, self.buf = split(self.buf + data if self.buf else data)
        out: list[bytes] = []
        run = self.run
        for body in bodies:
            frame = _frame(body)
            if frame is None:
                continue
            if frame.forget:
                self.specs.clear()
            for number, flat in frame.specs.items():
                self.specs[number] = Spec([Check(*flat[i:i + 5]) for i in range(0, len(flat), 5)])
            results = []
            for op in frame.ops:
                try:
                    results.append(None if op is None else run[type(op)](op))
                except Exception:  # a malformed op: answer it, keep the worker's connection
                    log.exception("limits: bad request %s", type(op).__name__)
                    results.append(None)
            if frame.answer:
                out.append(framed(Answers(results)))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _admit(self, op: Admit) -> list[Any]:
        # Each check unpacks as a Check would.
        return _answer(self.counters.admit(op.checks, op.lease, op.dry))

    def _admit_spec(self, op: AdmitSpec) -> list[Any]:
        return _answer(
            self.counters.admit(self.specs[op.spec].checks, op.lease, False, op.prompt)
        )

    def _charge(self, op: Charge) -> None:
        self.counters.charge(op.items, op.release, op.lease)

    def _charge_spec(self, op: ChargeSpec) -> None:
        spec = self.specs[op.spec]
        if op.release and spec.lease_keys:
            self.counters.release(spec.lease_keys, op.lease)
        if op.tokens and spec.charges:
            self.counters.charge(spec.items(op.tokens))

    def _release(self, op: Release) -> None:
        self.counters.release(op.keys, op.lease)

    def _renew(self, op: Renew) -> None:
        self.counters.renew(op.keys, op.leases)

    def _give(self, op: Give) -> None:
        self.table.give(op.key, op.lease)

    def _take(self, op: Take) -> Any:
        lease = op.lease
        got = self.table.take(op.pool or op.key, [op.key, *op.others], op.limit, op.max_queue,
                              lease, self.owner, op.who, op.priority, op.weight)
        if not isinstance(got, asyncio.Future):
            return list(got) if op.pool else got[0]
        task = asyncio.create_task(self._queued(lease, got, op.seconds, op.token, op.pool))
        self.waits.add(task)
        task.add_done_callback(self.waits.discard)
        return QUEUED

    async def _queued(
        self, lease: str, fut: asyncio.Future[tuple[int, int]], seconds: float, token: int,
        pool: str,
    ) -> None:
        result = await self.table.wait(lease, fut, seconds)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(framed(Later(token, list(result) if pool else result[0])))


def _frame(body: bytes) -> Frame | None:
    """A frame, its malformed ops as None (answered None, the rest run); None if the frame
    itself is malformed."""
    try:
        return decode_frame(body)
    except msgspec.DecodeError:
        pass
    try:
        raw = decode_raw_frame(body)
    except msgspec.DecodeError:
        log.exception("limits: a malformed frame")
        return None
    ops: list[Op | None] = []
    for op in raw.ops:
        try:
            ops.append(decode_op(op))
        except msgspec.DecodeError:
            ops.append(None)
    return Frame(raw.answer, ops, raw.specs, raw.forget)  # type: ignore[arg-type]


def _answer(o: Outcome) -> list[Any]:
    """An admission's answer as a frame carries it: [failed, wait (-1: never), used, reset]."""
    return [o.failed, -1.0 if o.wait == math.inf else o.wait, o.used, o.reset]


def start_server(path: str) -> threading.Thread:
    """Serve counters on `path` from a daemon thread of the calling (main) process."""
    counters = Counters()
    table = SlotTable()
    return serve_unix(path, lambda: _Server(counters, table), "airouter-limits")
