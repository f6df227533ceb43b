"""Node slots in Redis, shared by every replica: one Lua script, atomic on the server, on
Redis's clock.

Per backend, keys in one hash slot (limits.node_script): per node, the leases held (each
expires unless renewed, so a replica that dies frees its slots after `slot_lease_ttl`); one
queue of the waiters for any of its nodes, in fairness.scheduler's order (priority, then
weighted fair share by key), and when each waiter expires unless it asks again.

A waiter polls: it asks again after a short sleep that doubles up to POLL_MAX. Polling was
chosen over a wake-up channel (pub/sub, blocking pops) because it needs no connection per
waiter, no message that a crash can lose, and nothing to clean up: a waiter that stops asking
leaves the queue by itself. A slot goes to the first `limit - held` waiters in that order, so
a newcomer overtakes only the waiters it ranks before; the cost is at most POLL_MAX of latency on a
handover, small beside a generation. Calls from one worker are coalesced as in redis_engine:
the ops that arrive while a call is in flight go together in the next."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from airouter.backends.node_slots import FULL, GRANTED, SHED, TIMEOUT, SlotStore
from airouter.fairness.claim import NOBODY, Claim
from airouter.limits.batching import RedisBatcher, Waiter, answer
from airouter.limits.node_script import SCRIPT, SHED_RESULT, SUFFIXES
from airouter.limits.policy import PREFIX

QUEUED = 2
POLL_FIRST = 0.005  # seconds before a waiter asks again; doubles up to POLL_MAX
POLL_MAX = 0.05
WAITER_TTL = 2.0  # a waiter that stopped asking leaves the queue after this long
_pack = msgspec.msgpack.Encoder().encode


class Take(msgspec.Struct, array_like=True, tag="T"):
    """Take a slot of one of `nodes` (in order of preference), or wait in the pool's queue:
    [1, i] granted on nodes[i], 2 queued (ask again), 0 the queue is full, 3 shed. `who`,
    `priority`, `weight`: the waiter's place (fairness.scheduler)."""

    pool: str
    nodes: list[str]
    lease: str
    limit: int
    max_queue: int
    who: str = ""
    priority: int = 1
    weight: float = 1.0


class Give(msgspec.Struct, array_like=True, tag="G"):
    """Give a slot back (held on any of `nodes`), or leave the queue."""

    pool: str
    nodes: list[str]
    lease: str


class Renew(msgspec.Struct, array_like=True, tag="N"):
    """Renew a held lease."""

    pool: str
    node: str
    lease: str


Op = Take | Give | Renew


class RedisSlots(RedisBatcher[Op], SlotStore):
    script = SCRIPT

    def __init__(self, url: str, lease_ttl: float = 30.0, timeout: float = 0.5) -> None:
        super().__init__(url, timeout, " for node slots")
        self.lease_ttl = lease_ttl
        self._renewer: asyncio.Task[None] | None = None
        self.held: dict[str, tuple[str, str]] = {}  # lease -> (pool, node), renewed while held
        self._prefix = os.urandom(6).hex()
        self._seq = 0
        self._pools: dict[str, str] = {}
        self._nodes: dict[tuple[str, str], str] = {}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._renewer = asyncio.create_task(self._renew_forever())

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        for lease, (pool, node) in list(self.held.items()):
            self._give(pool, [node], lease)
        self.held.clear()
        if self._ops or self._busy:
            with contextlib.suppress(TimeoutError):  # ops go in order: the last one ends them
                await asyncio.wait_for(self.ask(Give("", [], "")), 2)
        await super().aclose()

    async def take_any(
        self, pool: str, keys: Sequence[str], limit: int, max_queue: int,
        queue_timeout: float, who: Claim = NOBODY,
    ) -> tuple[int, str, int] | None:
        self._seq += 1
        lease = f"{self._prefix}:{self._seq}"
        nodes = list(keys)
        deadline = time.monotonic() + queue_timeout
        pause = POLL_FIRST
        try:
            while True:
                got = await self.ask(
                    Take(pool, nodes, lease, limit, max_queue, who.key, who.priority, who.weight)
                )
                if type(got) is list:
                    self.held[lease] = (pool, nodes[got[1]])
                    return GRANTED, lease, got[1]
                if got != QUEUED:
                    return None if got is None else (SHED if got == SHED_RESULT else FULL, "", -1)
                left = deadline - time.monotonic()
                if left <= 0:
                    self._give(pool, nodes, lease)
                    return TIMEOUT, "", -1
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, POLL_MAX)
        except BaseException:  # cancelled: whether queued or just granted, nothing is kept
            self.held.pop(lease, None)
            self._give(pool, nodes, lease)
            raise

    def give(self, key: str, lease: str) -> None:
        pool, node = self.held.pop(lease, (key, key))
        self._give(pool, [node], lease)

    def _give(self, pool: str, nodes: list[str], lease: str) -> None:
        self.queue(Give(pool, nodes, lease), None)  # Redis down: the lease expires by itself

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            for lease, (pool, node) in list(self.held.items()):
                self.queue(Renew(pool, node, lease), None)

    def _send(self, ops: list[Op], waiters: list[Waiter], more: bool) -> bool:
        index: dict[str, int] = {}
        wire: list[tuple[Any, ...]] = []
        for op in ops:  # (aclose's last op, of pool "", removes nothing from empty keys)
            if type(op) is Take:
                wire.append(("T", self._pool(op.pool, index), op.lease, op.limit, op.max_queue,
                             op.who, op.priority, float(op.weight),
                             [self._node(op.pool, n, index) for n in op.nodes]))
            elif type(op) is Give:
                wire.append(("G", self._pool(op.pool, index), op.lease,
                             [self._node(op.pool, n, index) for n in op.nodes]))
            elif type(op) is Renew:
                wire.append(("N", self._node(op.pool, op.node, index), op.lease))
        packed = _pack((int(self.lease_ttl * 1000), int(WAITER_TTL * 1000), wire))
        self.eval([k.encode() for k in index], packed, len(ops),
                  lambda results: answer(waiters, None) if results is None
                  else _answer(waiters, results))
        return True

    def _pool(self, pool: str, index: dict[str, int]) -> int:
        """The 1-based index in KEYS of the pool's first queue key, adding its nine."""
        first = self._pools.get(pool)
        if first is None:
            first = self._pools[pool] = f"{PREFIX}n:{{{pool}}}:"  # {hash tag}: one slot
        at = index.get(first + SUFFIXES[0])
        if at is None:
            at = len(index) + 1
            for s in SUFFIXES:
                index[first + s] = len(index) + 1
        return at

    def _node(self, pool: str, node: str, index: dict[str, int]) -> int:
        """The 1-based index in KEYS of a node's slots, in its pool's hash slot."""
        key = self._nodes.get((pool, node))
        if key is None:
            key = self._nodes[(pool, node)] = f"{PREFIX}n:{{{pool}}}:h:{node}"
        at = index.get(key)
        if at is None:
            at = index[key] = len(index) + 1
        return at


def _answer(waiters: list[Waiter], results: list[Any]) -> None:
    for fut, result in zip(waiters, results, strict=True):
        if fut is not None and not fut.done():
            fut.set_result(result)
