"""Per-node concurrency slots beyond one process: the table the main process keeps for its
workers, and the choice of store for a config.

Without Redis, the workers of a replica ask the main process (limits.shared) for a slot of
one of a backend's nodes. The table there holds every waiter itself, one queue per backend in
fairness.scheduler's order (priority, then weighted fair share by key), and answers the first
that may use a node the moment a slot of it frees: no polling. A slot
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
    __slots__ = ("pool", "keys", "lease", "owner", "fut")

    def __init__(
        self, pool: str, keys: list[str], lease: str, owner: object,
        fut: asyncio.Future[tuple[int, int]],
    ) -> None:
        self.pool = pool
        self.keys = keys  # the nodes it may take a slot of, in order of preference
        self.lease = lease
        self.owner = owner
        self.fut = fut


class SlotTable:
    """Slots taken per node key (lease -> owner) and, per backend, the requests waiting for a
    slot of any of its nodes. Runs on one event loop: no locks."""

    def __init__(self) -> None:
        self.held: dict[str, dict[str, object]] = {}
        self.where: dict[str, str] = {}  # a held lease -> its node
        self.queues: dict[str, FairQueue[_Waiter]] = {}  # per backend
        self.waiting: dict[str, _Waiter] = {}  # lease -> its waiter, whatever the backend
        self.limits: dict[str, int] = {}
        self.pools: dict[str, set[str]] = {}  # node -> the queues with a waiter that may use it

    def take(
        self, pool: str, keys: list[str], limit: int, max_queue: int, lease: str,
        owner: object, who: str = "", priority: int = 1, weight: float = 1.0,
    ) -> tuple[int, int] | asyncio.Future[tuple[int, int]]:
        """(GRANTED, the index in `keys` of the node) or (FULL, -1) now, or a future that a
        slot freed on any of `keys` resolves with (GRANTED, index), or a request of a higher
        priority with (SHED, -1) (the caller bounds its wait, then calls `give` to leave the
        queue)."""
        if priority not in (0, 1, 2) or not weight > 0:
            raise ValueError(f"priority {priority!r}, weight {weight!r}")
        for k in keys:
            before = self.limits.get(k, limit)
            self.limits[k] = limit  # a reloaded config's limit applies from its first request
            if limit > before:
                self._hand_on(k)
        # A free slot is one no waiter may use (each freed slot goes to one that may): take it.
        for i, k in enumerate(keys):
            held = self.held.setdefault(k, {})
            if len(held) < limit:
                held[lease] = owner
                self.where[lease] = k
                return GRANTED, i
        queue = self.queues.get(pool)
        if queue is None:
            queue = self.queues[pool] = FairQueue()
        w = _Waiter(pool, keys, lease, owner, asyncio.get_running_loop().create_future())
        ok, shed = queue.push(w, who, priority, weight, max_queue)
        if shed is not None:
            del self.waiting[shed.lease]
            shed.fut.set_result((SHED, -1))
        if not ok:
            return FULL, -1
        for k in keys:
            self.pools.setdefault(k, set()).add(pool)
        self.waiting[lease] = w
        return w.fut

    def give(self, key: str, lease: str) -> None:
        """Free the slot `lease` holds (on whichever node), or take it out of its queue."""
        node = self.where.pop(lease, None)
        if node is not None:
            del self.held[node][lease]
            self._hand_on(node)
            return
        w = self.waiting.pop(lease, None)
        if w is not None:
            self.queues[w.pool].remove(w)
            w.fut.cancel()

    def drop(self, owner: object) -> None:
        """Everything `owner` held or waited for: its connection is gone."""
        for w in [w for w in self.waiting.values() if w.owner is owner]:
            self.give("", w.lease)
        for key, held in self.held.items():
            gone = [lease for lease, o in held.items() if o is owner]
            for lease in gone:
                del held[lease]
                del self.where[lease]
            if gone:
                self._hand_on(key)

    def _hand_on(self, key: str) -> None:
        """The free slots of node `key` to the first waiters that may use it."""
        held = self.held.setdefault(key, {})
        limit = self.limits.get(key, 0)
        for pool in self.pools.get(key, ()):
            queue = self.queues[pool]
            while queue and len(held) < limit:
                w = queue.pop(lambda w: key in w.keys)
                if w is None:
                    break
                del self.waiting[w.lease]
                if not w.fut.done():
                    held[w.lease] = w.owner
                    self.where[w.lease] = key
                    w.fut.set_result((GRANTED, w.keys.index(key)))

    async def wait(
        self, lease: str, fut: asyncio.Future[tuple[int, int]], seconds: float
    ) -> tuple[int, int]:
        """(GRANTED, index) when `fut` got a slot within `seconds`, (SHED, -1) when a request
        of a higher priority took its place, else (TIMEOUT, -1) (out of the queue)."""
        try:
            async with asyncio.timeout(seconds):
                await fut
        except (TimeoutError, asyncio.CancelledError):
            pass
        if fut.done() and not fut.cancelled():
            return fut.result()  # a slot came as the time ran out: it is held
        self.give("", lease)
        return TIMEOUT, -1


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
