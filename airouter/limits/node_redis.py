"""Node slots in Redis, shared by every replica: one Lua script, atomic on the server, on
Redis's clock.

Per node, ten keys in one hash slot (limits.node_script): the leases held (each expires
unless renewed, so a replica that dies frees its slots after `slot_lease_ttl`), the waiters,
in fairness.scheduler's order (priority, then weighted fair share by key), and when each
waiter expires unless it asks again.

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
    """Take a slot, or wait in the queue: 1 granted, 2 queued (ask again), 0 the queue is
    full, 3 shed. `node`: the 1-based index of the node's first key in KEYS, set when sent.
    `who`, `priority`, `weight`: the waiter's place (fairness.scheduler)."""

    key: str
    lease: str
    limit: int
    max_queue: int
    who: str = ""
    priority: int = 1
    weight: float = 1.0
    node: int = 0


class Give(msgspec.Struct, array_like=True, tag="G"):
    """Give a slot back, or leave the queue."""

    key: str
    lease: str
    node: int = 0


class Renew(msgspec.Struct, array_like=True, tag="N"):
    """Renew a held lease."""

    key: str
    lease: str
    node: int = 0


Op = Take | Give | Renew


def _wire(op: Op) -> tuple[Any, ...]:
    """The op as the script reads it: [kind, node, lease, limit, max_queue, who, priority,
    weight]."""
    if type(op) is Take:
        return ("T", op.node, op.lease, op.limit, op.max_queue, op.who, op.priority,
                float(op.weight))
    return (op.__struct_config__.tag, op.node, op.lease)


def _keys(key: str) -> tuple[str, ...]:
    base = f"{PREFIX}n:{{{key}}}:"  # {hash tag}: one cluster slot for them all
    return tuple(base + s for s in SUFFIXES)


class RedisSlots(RedisBatcher[Op], SlotStore):
    script = SCRIPT

    def __init__(self, url: str, lease_ttl: float = 30.0, timeout: float = 0.5) -> None:
        super().__init__(url, timeout, " for node slots")
        self.lease_ttl = lease_ttl
        self._renewer: asyncio.Task[None] | None = None
        self.held: dict[str, str] = {}  # lease -> node key, renewed while held
        self._prefix = os.urandom(6).hex()
        self._seq = 0
        self._keys: dict[str, tuple[str, ...]] = {}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._renewer = asyncio.create_task(self._renew_forever())

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        for lease, key in list(self.held.items()):
            self.give(key, lease)
        if self._ops or self._busy:
            with contextlib.suppress(TimeoutError):  # ops go in order: the last one ends them
                await asyncio.wait_for(self.ask(Give("", "")), 2)
        await super().aclose()

    async def take(
        self, key: str, limit: int, max_queue: int, queue_timeout: float, who: Claim = NOBODY
    ) -> tuple[int, str] | None:
        self._seq += 1
        lease = f"{self._prefix}:{self._seq}"
        deadline = time.monotonic() + queue_timeout
        pause = POLL_FIRST
        try:
            while True:
                got = await self.ask(
                    Take(key, lease, limit, max_queue, who.key, who.priority, who.weight)
                )
                if got == GRANTED:
                    self.held[lease] = key
                    return GRANTED, lease
                if got != QUEUED:
                    return None if got is None else (SHED if got == SHED_RESULT else FULL, "")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.give(key, lease)
                    return TIMEOUT, ""
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, POLL_MAX)
        except BaseException:  # cancelled: whether queued or just granted, nothing is kept
            self.give(key, lease)
            raise

    def give(self, key: str, lease: str) -> None:
        self.held.pop(lease, None)
        self.queue(Give(key, lease), None)  # Redis down: the lease expires there by itself

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            for lease, key in list(self.held.items()):
                self.queue(Renew(key, lease), None)

    def _send(self, ops: list[Op], waiters: list[Waiter], more: bool) -> bool:
        index: dict[str, int] = {}
        wire = []
        for op in ops:  # (aclose's last op, of key "", removes nothing from empty keys)
            op.node = self._index(op.key, index)
            wire.append(_wire(op))
        packed = _pack((int(self.lease_ttl * 1000), int(WAITER_TTL * 1000), wire))
        self.eval([k.encode() for k in index], packed, len(ops),
                  lambda results: answer(waiters, None) if results is None
                  else _answer(waiters, results))
        return True

    def _index(self, key: str, index: dict[str, int]) -> int:
        """The 1-based index of `key`'s first storage key in KEYS, adding its ten."""
        keys = self._keys.get(key)
        if keys is None:
            keys = self._keys[key] = _keys(key)
        first = index.get(keys[0])
        if first is None:
            first = len(index) + 1
            for k in keys:
                index[k] = len(index) + 1
        return first


def _answer(waiters: list[Waiter], results: list[Any]) -> None:
    for fut, result in zip(waiters, results, strict=True):
        if fut is not None and not fut.done():
            fut.set_result(result)
