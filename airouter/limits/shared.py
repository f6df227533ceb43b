"""Limits shared by the workers of one process group, without Redis: the workers' side (the
frames both sides speak are limits.wire's typed structs).

The main process keeps the counters (engine.Counters) and the nodes' slots (slots.SlotTable)
in a thread of its own (limits.shared_server) and answers the workers over a unix socket, one
connection per worker and purpose. A frame is length-prefixed msgpack: every op made while
the previous frame is unanswered goes in the next one (as with Redis, limits.redis_engine), so
a busy worker pays one write, one read and one decode per batch, not per op, and the server
answers a batch in one frame of results, one per op, in order. Charges and releases are not
waited for: they are queued ahead of the worker's later admissions, and a frame of them alone
gets no answer. A queued slot request is answered later in a frame of its own. The counters
outlive worker restarts and config reloads.

A request's admission and charges name its Spec by number (wire.AdmitSpec, wire.ChargeSpec);
a frame (wire.Frame: answer?, ops, specs, forget) defines, in
`specs`, each Spec its ops name that the connection has not defined before, so the server
builds a request's checks once per connection, not once per request. Past MAX_DEFINED Specs
(a dated budget makes a new one each day), `forget` has the server drop the ones it holds
before the frame's own are defined."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from airouter.backends.node_slots import GRANTED, SlotStore
from airouter.fairness.claim import NOBODY, Claim
from airouter.frames import split
from airouter.limits.batching import Batcher, Waiter, answer
from airouter.limits.engine import Check, Engine, Item, Outcome, Spec
from airouter.limits.wire import (
    QUEUED,
    Admit,
    AdmitSpec,
    Answers,
    Charge,
    ChargeSpec,
    Frame,
    Give,
    Nothing,
    Op,
    Release,
    Renew,
    Take,
    decode_reply,
    framed,
)

SOCKET_ENV = "AIROUTER_LIMITS_SOCKET"
CALL_TIMEOUT = 1.0  # seconds; then the request is served under limits_on_redis_failure
START_TIMEOUT = 10.0  # seconds a starting worker waits to connect
SWEEP = CALL_TIMEOUT / 4  # how often a connection looks for an answer overdue
MAX_DEFINED = 4096  # Specs one connection defines before its server forgets them all


class _Client(Batcher[Op], asyncio.Protocol):
    """One connection to the main process's server; ops go in order, in batches."""

    retry_after = 0.0  # the server is local: every batch tries it again
    max_batch = 1 << 30  # a frame carries every op queued

    def __init__(self, path: str) -> None:
        super().__init__("the main process's limits server")
        self.path = path
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._buf = b""
        self._named: dict[int, list[Any]] = {}  # Specs the queued ops name: number -> checks
        self._defined: set[int] = set()  # Specs this connection's server knows
        # The batch in flight: its waiters, ops and the Specs they name; one at a time.
        self._inflight: tuple[list[Waiter], list[Op], dict[int, list[Any]]] | None = None
        self._sent_at = 0.0
        # Queued slot requests: token -> (future, when to give up on the server).
        self._deferred: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    # -- batching ---------------------------------------------------------------------------

    def _post(self, op: Op) -> None:
        """An op nobody waits for, sent ahead of this worker's later ops: at the end of this
        loop turn with whatever else it made, or with the next batch while one is in flight."""
        self.queue(op, None)

    def _ready(self) -> bool:
        t = self._transport
        if t is not None and not t.is_closing():
            return True
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        return False

    def _send(self, ops: list[Op], waiters: list[Waiter], more: bool) -> bool:
        named, specs, forget = self._named, {}, False
        if named:
            self._named = {}
            if len(self._defined) > MAX_DEFINED:
                self._defined, forget = set(), True
            defined = self._defined
            specs = {n: flat for n, flat in named.items() if n not in defined}
            defined.update(specs)
        asks = any(w is not None for w in waiters)
        assert self._transport is not None
        self._transport.write(framed(Frame(asks, ops, specs, forget)))
        if asks:
            self._inflight = (waiters, ops, named)
            self._sent_at = self.loop.time()
        return asks

    async def connect_first(self) -> None:
        """Connect before the worker serves, waiting longer than a request would: while new
        workers start on a reload, the main process is busy validating the new config, and a
        worker's first requests must not find it slow and go uncounted. No connection in
        time: the first request tries again, as after any failure."""
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await self.loop.create_unix_connection(lambda: self, self.path)
            self.ok()
        except OSError as e:
            self.failed(e)

    async def _connect(self) -> None:
        loop = self.loop
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await loop.create_unix_connection(lambda: self, self.path)
            self.ok()
        except OSError as e:
            self.failed(e)
            self.drop_queued()
        finally:
            self._connecting = None
        self.flush()

    def _answer(
        self,
        waiters: list[Waiter],
        results: list[Any],
        ops: list[Op],
        named: dict[int, list[Any]],
    ) -> None:
        """Results in order; an admission's, a list, as an Outcome."""
        for fut, r, op in zip(waiters, results, ops, strict=True):
            if fut is None:
                continue
            if fut.done():
                # Nobody waits any more: what an admission took goes back at once.
                if fut.cancelled() and type(r) is list and r[0] < 0:
                    self._abandoned(op, named)
                continue
            if type(r) is list:
                if len(r) == 4:
                    failed, wait, used, reset = r
                    fut.set_result(Outcome(failed, math.inf if wait < 0 else wait, used, reset))
                elif len(r) == 2:  # a node slot's: [outcome, the node's index]
                    fut.set_result(r)
                else:  # not an answer this client knows: no verdict
                    fut.set_result(None)
            elif r != QUEUED:  # else its answer comes later, to the same future
                fut.set_result(r)

    def _abandoned(self, op: Op, named: dict[int, list[Any]]) -> None:
        """An op whose waiter was cancelled went through (see SharedEngine); `named`: the
        Specs of its frame."""

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._buf = b""
        self._defined = set()  # a new server connection: every Spec is defined again
        self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def data_received(self, data: bytes) -> None:
        bodies, self._buf = split(self._buf + data if self._buf else data)
        for body in bodies:
            msg = decode_reply(body)
            if isinstance(msg, Answers):
                inflight, self._inflight = self._inflight, None
                if inflight is not None:
                    waiters, ops, named = inflight
                    if len(msg.results) == len(waiters):
                        self._answer(waiters, msg.results, ops, named)
                    else:
                        answer(waiters, None)
                self._busy = False
            else:
                fut, _ = self._deferred.pop(msg.token, (None, 0.0))
                if fut is not None and not fut.done():
                    fut.set_result(msg.result)
        if not self._busy and self._ops:
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._sweeper is not None:
            self._sweeper.cancel()
        inflight, self._inflight = self._inflight, None
        answer(inflight[0] if inflight else [], None)
        deferred, self._deferred = self._deferred, {}
        answer([fut for fut, _ in deferred.values()], None)
        self.answered()

    def _sweep(self) -> None:
        """An answer overdue drops the connection: its waiters get no verdict."""
        t = self._transport
        if t is None:
            return
        now = self.loop.time()
        if self._inflight is not None and now - self._sent_at > CALL_TIMEOUT:
            self.failed(TimeoutError("no answer in time"))
            t.abort()
            return
        for token, (fut, deadline) in list(self._deferred.items()):
            if deadline < now:
                del self._deferred[token]
                if not fut.done():
                    fut.set_result(None)
        self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    async def aclose(self) -> None:
        if self._ops or self._inflight is not None:
            # Ops run in order: when this empty one is answered, every queued one is in.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ask(Nothing()), 2)
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

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.connect_first()

    async def take_any(
        self, pool: str, keys: Sequence[str], limit: int, max_queue: int,
        queue_timeout: float, who: Claim = NOBODY,
    ) -> tuple[int, str, int] | None:
        self._seq += 1
        token = self._seq
        lease = f"{self._prefix}{token}"
        loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._deferred[token] = (fut, loop.time() + queue_timeout + CALL_TIMEOUT)
        self.queue(Take(keys[0], limit, max_queue, lease, queue_timeout, token, who.key,
                        who.priority, who.weight, pool, list(keys[1:])), fut)
        try:
            got = await fut
        except BaseException:  # cancelled: whether queued or just granted, nothing is kept
            self._post(Give(keys[0], lease))  # (the table finds a lease on any node)
            raise
        finally:
            self._deferred.pop(token, None)
        if got is None:  # no answer
            self._post(Give(keys[0], lease))
            return None
        outcome, index = got
        return (outcome, lease, index) if outcome == GRANTED else (outcome, "", -1)

    def give(self, key: str, lease: str) -> None:
        self._post(Give(key, lease))


class SharedEngine(_Client, Engine):
    """A worker's client of the main process's counters."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.connect_first()

    def admit(
        self, checks: list[Check], lease: str, dry: bool = False
    ) -> asyncio.Future[Outcome | None]:
        return self.ask(Admit(dry, lease, checks))

    def admit_spec(self, spec: Spec, prompt: int, lease: str) -> asyncio.Future[Outcome | None]:
        self._named[spec.id] = spec.flat
        return self.ask(AdmitSpec(spec.id, prompt, lease))

    def _abandoned(self, op: Op, named: dict[int, list[Any]]) -> None:
        if type(op) is AdmitSpec and op.lease and op.spec in named:
            # It took a lease nobody will release.
            self._named[op.spec] = named[op.spec]
            self._post(ChargeSpec(op.spec, 0, op.lease, True))

    def charge_spec(
        self, spec: Spec, tokens: int, lease: str, release: bool
    ) -> Awaitable[None] | None:
        self._named[spec.id] = spec.flat
        self._post(ChargeSpec(spec.id, tokens, lease, release))
        return None

    def post(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> Awaitable[None] | None:
        self._post(Charge(items, release or [], lease))
        return None

    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        await self.ask(Charge(items, release or [], lease))

    async def release(self, keys: list[str], lease: str) -> None:
        self._post(Release(keys, lease))

    async def renew(self, keys: list[str], leases: list[str]) -> None:
        await self.ask(Renew(keys, leases))
