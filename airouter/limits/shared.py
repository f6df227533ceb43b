"""Limits shared by the workers of one process group, without Redis: the workers' side, and
the frames both sides speak.

The main process keeps the counters (engine.Counters) and the nodes' slots (slots.SlotTable)
in a thread of its own (limits.shared_server) and answers the workers over a unix socket, one
connection per worker and purpose. A frame is length-prefixed msgpack: every op made while
the previous frame is unanswered goes in the next one (as with Redis, limits.redis_engine), so
a busy worker pays one write, one read and one decode per batch, not per op, and the server
answers a batch in one frame of results, one per op, in order. Charges and releases are not
waited for: they are queued ahead of the worker's later admissions, and a frame of them alone
gets no answer. A queued slot request is answered later in a frame of its own. The counters
outlive worker restarts and config reloads.

A request's admission and charges name its Spec by number (`["P", spec, prompt, lease]`,
`["Q", spec, tokens, lease, release]`); a frame `[answer?, ops, specs, forget]` defines, in
`specs`, each Spec its ops name that the connection has not defined before, so the server
builds a request's checks once per connection, not once per request. Past MAX_DEFINED Specs
(a dated budget makes a new one each day), `forget` has the server drop the ones it holds
before the frame's own are defined."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import struct
from collections.abc import Awaitable
from typing import Any, cast

import msgspec

from airouter.backends.node_slots import GRANTED, SlotStore
from airouter.limits.engine import Check, Engine, Item, Outcome, Spec

log = logging.getLogger("airouter.limits")
SOCKET_ENV = "AIROUTER_LIMITS_SOCKET"
CALL_TIMEOUT = 1.0  # seconds; then the request is served under limits_on_redis_failure
SWEEP = CALL_TIMEOUT / 4  # how often a connection looks for an answer overdue
LOG_EVERY = 60.0  # seconds between two logs of an unreachable server
MAX_DEFINED = 4096  # Specs one connection defines before its server forgets them all
QUEUED = "Q"  # a slot request waits in the node's queue: its answer comes in a frame of its own
HEAD = struct.Struct("!I")  # a frame's length
encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder().decode


def read_frames(buf: bytes) -> tuple[list[Any], bytes]:
    """The complete frames in `buf`, decoded, and the bytes left of an incomplete one."""
    out = []
    pos, n = 0, len(buf)
    while n - pos >= 4:
        end = pos + 4 + HEAD.unpack_from(buf, pos)[0]
        if end > n:
            break
        out.append(decode(buf[pos + 4:end]))
        pos = end
    return out, buf[pos:]


class _Client(asyncio.Protocol):
    """One connection to the main process's server; ops go in order, in batches."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf = b""
        self._ops: list[Any] = []
        self._waiters: list[asyncio.Future[Any] | None] = []  # per op; None: nobody waits
        self._asks = 0  # ops queued that wait for an answer
        self._named: dict[int, list[Any]] = {}  # Specs the queued ops name: number -> checks
        self._defined: set[int] = set()  # Specs this connection's server knows
        self._scheduled = False
        # The batch in flight: its waiters, ops and the Specs they name; one at a time.
        self._inflight: (
            tuple[list[asyncio.Future[Any] | None], list[Any], dict[int, list[Any]]] | None
        ) = None
        self._sent_at = 0.0
        # Queued slot requests: token -> (future, when to give up on the server).
        self._deferred: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._logged = -LOG_EVERY

    # -- batching ---------------------------------------------------------------------------

    def _queue(self, op: list[Any], fut: asyncio.Future[Any] | None) -> None:
        self._ops.append(op)
        self._waiters.append(fut)
        if fut is not None:
            self._asks += 1
        if self._inflight is None and not self._scheduled:
            # At the end of this loop turn: every op made in the same turn goes in one frame.
            self._scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush)

    def _ask(self, op: list[Any]) -> asyncio.Future[Any]:
        """The op's answer: an admission's Outcome, a slot's grant, or None when the server
        did not answer (it is away)."""
        fut = (self._loop or asyncio.get_running_loop()).create_future()
        self._queue(op, fut)
        return fut

    def _post(self, op: list[Any]) -> None:
        """An op nobody waits for, sent ahead of this worker's later ops: at the end of this
        loop turn with whatever else it made, or with the next batch while one is in flight."""
        self._queue(op, None)

    def _flush(self) -> None:
        self._scheduled = False
        if self._inflight is not None or not self._ops:
            return
        t = self._transport
        if t is None or t.is_closing():
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return
        ops, waiters, asks = self._ops, self._waiters, self._asks
        self._ops, self._waiters, self._asks = [], [], 0
        named, specs, forget = self._named, {}, False
        if named:
            self._named = {}
            if len(self._defined) > MAX_DEFINED:
                self._defined, forget = set(), True
            defined = self._defined
            specs = {n: flat for n, flat in named.items() if n not in defined}
            defined.update(specs)
        body = encode([asks > 0, ops, specs, forget])
        t.write(HEAD.pack(len(body)) + body)
        if asks:
            self._inflight = (waiters, ops, named)
            self._sent_at = (self._loop or asyncio.get_running_loop()).time()

    async def _connect(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await loop.create_unix_connection(lambda: self, self.path)
        except OSError as e:
            if loop.time() - self._logged >= LOG_EVERY:
                self._logged = loop.time()
                log.error("limits: the main process's server is unreachable (%s)", e)
            self._answer(self._waiters, None)
            self._ops, self._waiters, self._asks = [], [], 0
        finally:
            self._connecting = None
        self._flush()

    def _answer(
        self,
        waiters: list[asyncio.Future[Any] | None],
        results: list[Any] | None,
        ops: list[Any] | None = None,
        named: dict[int, list[Any]] | None = None,
    ) -> None:
        """Results in order (None: no answer); an admission's, a list, as an Outcome."""
        for i, fut in enumerate(waiters):
            if fut is None:
                continue
            if fut.done():
                # Nobody waits any more: what an admission took goes back at once.
                if fut.cancelled() and ops is not None and results is not None:
                    r = results[i]
                    if type(r) is list and r[0] < 0:
                        self._abandoned(ops[i], named or {})
                continue
            if results is None:
                fut.set_result(None)
                continue
            r = results[i]
            if type(r) is list:
                if len(r) == 4:
                    failed, wait, used, reset = r
                    fut.set_result(Outcome(failed, math.inf if wait < 0 else wait, used, reset))
                else:  # not an answer this client knows: no verdict
                    fut.set_result(None)
            elif r != QUEUED:  # else its answer comes later, to the same future
                fut.set_result(r)

    def _abandoned(self, op: list[Any], named: dict[int, list[Any]]) -> None:
        """An op whose waiter was cancelled went through (see SharedEngine); `named`: the
        Specs of its frame."""

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._buf = b""
        self._defined = set()  # a new server connection: every Spec is defined again
        loop = self._loop or asyncio.get_running_loop()
        self._sweeper = loop.call_later(SWEEP, self._sweep)

    def data_received(self, data: bytes) -> None:
        frames, self._buf = read_frames(self._buf + data if self._buf else data)
        for frame in frames:
            if frame[0] == 0:
                inflight, self._inflight = self._inflight, None
                if inflight is not None:
                    waiters, ops, named = inflight
                    results = frame[1]
                    if len(results) != len(waiters):
                        results = [None] * len(waiters)
                    self._answer(waiters, results, ops, named)
            else:
                fut, _ = self._deferred.pop(frame[1], (None, 0.0))
                if fut is not None and not fut.done():
                    fut.set_result(frame[2])
        if self._inflight is None and self._ops:
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._sweeper is not None:
            self._sweeper.cancel()
        inflight, self._inflight = self._inflight, None
        self._answer(inflight[0] if inflight else [], None)
        deferred, self._deferred = self._deferred, {}
        self._answer([fut for fut, _ in deferred.values()], None)
        if self._ops:
            self._flush()

    def _sweep(self) -> None:
        """An answer overdue drops the connection: its waiters get no verdict."""
        t = self._transport
        if t is None:
            return
        now = (self._loop or asyncio.get_running_loop()).time()
        if self._inflight is not None and now - self._sent_at > CALL_TIMEOUT:
            log.error("limits: the main process's server did not answer in time")
            t.abort()
            return
        for token, (fut, deadline) in list(self._deferred.items()):
            if deadline < now:
                del self._deferred[token]
                if not fut.done():
                    fut.set_result(None)
        self._sweeper = (self._loop or asyncio.get_running_loop()).call_later(SWEEP, self._sweep)

    async def aclose(self) -> None:
        if self._ops or self._inflight is not None:
            # Ops run in order: when this empty one is answered, every queued one is in.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ask(["N"]), 2)
        if self._transport is not None:
            self._transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()


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
        token = self._seq
        lease = f"{self._prefix}{token}"
        loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._deferred[token] = (fut, loop.time() + queue_timeout + CALL_TIMEOUT)
        self._queue(["T", key, limit, max_queue, lease, queue_timeout, token], fut)
        try:
            got = await fut
        except BaseException:  # cancelled: whether queued or just granted, nothing is kept
            self._post(["G", key, lease])
            raise
        finally:
            self._deferred.pop(token, None)
        if got is None:  # no answer
            self._post(["G", key, lease])
            return None
        return (got, lease) if got == GRANTED else (got, "")

    def give(self, key: str, lease: str) -> None:
        self._post(["G", key, lease])


class SharedEngine(_Client, Engine):
    """A worker's client of the main process's counters."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def admit(
        self, checks: list[Check], lease: str, dry: bool = False
    ) -> asyncio.Future[Outcome | None]:
        return self._ask(["A", dry, lease, checks])

    def admit_spec(self, spec: Spec, prompt: int, lease: str) -> asyncio.Future[Outcome | None]:
        self._named[spec.id] = spec.flat
        return self._ask(["P", spec.id, prompt, lease])

    def _abandoned(self, op: list[Any], named: dict[int, list[Any]]) -> None:
        if op[0] == "P" and op[3] and op[1] in named:  # it took a lease nobody will release
            self._named[op[1]] = named[op[1]]
            self._post(["Q", op[1], 0, op[3], True])

    def charge_spec(
        self, spec: Spec, tokens: int, lease: str, release: bool
    ) -> Awaitable[None] | None:
        self._named[spec.id] = spec.flat
        self._post(["Q", spec.id, tokens, lease, release])
        return None

    def post(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> Awaitable[None] | None:
        self._post(["C", items, release or [], lease])
        return None

    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        await self._ask(["C", items, release or [], lease])

    async def release(self, keys: list[str], lease: str) -> None:
        self._post(["L", keys, lease])

    async def renew(self, keys: list[str], leases: list[str]) -> None:
        await self._ask(["R", keys, leases])
