"""Per-node concurrency slots beyond one process: the table the main process keeps for its
workers, and the choice of store for a config.

Without Redis, the workers of a replica ask the main process (limits.shared) for a node's
slots. The table there holds every waiter itself, in fairness.scheduler's order (priority,
then weighted fair share by key), and answers it the moment a slot frees: no polling. A slot
belongs to the worker's connection, so a worker that dies (its socket closes) gives back every
slot it held and leaves every queue at once. With Redis, slots are leases in Redis
(limits.node_redis)."""

from __future__ import annotations

import asyncio
import os

from airouter.backends.node_slots import FULL, GRANTED, SHED, TIMEOUT, SlotStore
from airouter.config import Config
from airouter.fairness.scheduler import FairQueue


class _Waiter:
    __slots__ = ("key", "lease", "owner", "fut")

    def __init__(self, key: str, lease: str, owner: object, fut: asyncio.Future[int]) -> None:
        self.key = key
        self.lease = lease
        self.owner = owner
        self.fut = fut


class SlotTable:
    """Slots taken per node key (lease -> owner) and the requests waiting for one. Runs on one
    event loop: no locks."""

    def __init__(self) -> None:
        self.held: dict[str, dict[str, object]] = {}
        self.queues: dict[str, FairQueue[_Waiter]] = {}
        self.waiting: dict[str, _Waiter] = {}  # lease -> its waiter, whatever the node
        self.limits: dict[str, int] = {}

    def take(
        self, key: str, limit: int, max_queue: int, lease: str, owner: object,
        who: str = "", priority: int = 1, weight: float = 1.0,
    ) -> int | asyncio.Future[int]:
        """GRANTED or FULL now, or a future that a freed slot resolves with GRANTED, or a
        request of a higher priority with SHED (the caller bounds its wait, then calls `give`
        to leave the queue)."""
        if priority not in (0, 1, 2) or not weight > 0:
            raise ValueError(f"priority {priority!r}, weight {weight!r}")
        self.limits[key] = limit  # a reloaded config's limit applies from its first request
        held = self.held.setdefault(key, {})
        queue = self.queues.get(key)
        if not queue and len(held) < limit:
            held[lease] = owner
            return GRANTED
        if queue is None:
            queue = self.queues[key] = FairQueue()
        w = _Waiter(key, lease, owner, asyncio.get_running_loop().create_future())
        ok, shed = queue.push(w, who, priority, weight, max_queue)
        if shed is not None:
            del self.waiting[shed.lease]
            shed.fut.set_result(SHED)
        if not ok:
            return FULL
        self.waiting[lease] = w
        return w.fut

    def give(self, key: str, lease: str) -> None:
        """Free the slot `lease` holds, or take it out of the queue."""
        held = self.held.get(key)
        if held is not None and held.pop(lease, None) is not None:
            self._hand_on(key)
            return
        w = self.waiting.pop(lease, None)
        if w is not None:
            self.queues[w.key].remove(w)
            w.fut.cancel()

    def drop(self, owner: object) -> None:
        """Everything `owner` held or waited for: its connection is gone."""
        for w in [w for w in self.waiting.values() if w.owner is owner]:
            self.give(w.key, w.lease)
        for key, held in self.held.items():
            gone = [lease for lease, o in held.items() if o is owner]
            for lease in gone:
                del held[lease]
            if gone:
                self._hand_on(key)

    def _hand_on(self, key: str) -> None:
        held = self.held[key]
        queue = self.queues.get(key)
        limit = self.limits.get(key, 0)
        while queue and len(held) < limit:
            w = queue.pop()
            if w is None:
                break
            del self.waiting[w.lease]
            if not w.fut.done():
                held[w.lease] = w.owner
                w.fut.set_result(GRANTED)

    async def wait(self, key: str, lease: str, fut: asyncio.Future[int], seconds: float) -> int:
        """GRANTED when `fut` got a slot within `seconds`, SHED when a request of a higher
        priority took its place, else TIMEOUT (out of the queue)."""
        try:
            async with asyncio.timeout(seconds):
                await fut
        except (TimeoutError, asyncio.CancelledError):
            pass
        if fut.done() and not fut.cancelled():
            return fut.result()  # a slot came as the time ran out: it is held
        self.give(key, lease)
        return TIMEOUT


def slot_limits(cfg: Config) -> bool:
    """Some backend limits its nodes' concurrency."""
    return any(getattr(b, "max_concurrent", 0) for b in cfg.backends.values())


def make_slot_store(cfg: Config) -> SlotStore | None:
    """Redis when configured, else the main process's table when running under the CLI (its
    workers, and the old and new workers of a reload, count together); None: count in this
    process alone (an embedded app)."""
    if not slot_limits(cfg):
        return None
    allow = cfg.server.limits_on_redis_failure == "allow"
    store: SlotStore
    if cfg.server.redis_url:
        from airouter.limits.node_redis import RedisSlots

        store = RedisSlots(cfg.server.redis_url, cfg.server.slot_lease_ttl)
    else:
        from airouter.limits.shared import SOCKET_ENV, SharedSlots

        path = os.environ.get(SOCKET_ENV)
        if not path:
            return None
        store = SharedSlots(path)
    store.allow_on_failure = allow
    return store


__all__ = ["FULL", "GRANTED", "SHED", "TIMEOUT", "SlotTable", "make_slot_store", "slot_limits"]
