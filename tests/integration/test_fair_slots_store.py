"""Fair admission holds wherever slots are counted: the main process's table for the workers
of a router and Redis for replicas answer waiters in the same order: priority first, then
weighted fair share by key; a full queue sheds its newest lowest-priority waiter for a higher
priority; a waiter that leaves frees its place at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from airouter.backends.node_slots import FULL, GRANTED, SHED, SlotStore
from airouter.fairness.claim import Claim
from airouter.fairness.scheduler import HIGH, LOW, NORMAL
from airouter.limits.node_redis import RedisSlots
from airouter.limits.shared import SharedSlots
from airouter.limits.shared_server import start_server
from tests.support.redis import run_redis

Factory = Callable[[], SlotStore]


@contextlib.asynccontextmanager
async def stores(make: Factory, n: int) -> AsyncIterator[list[SlotStore]]:
    out = [make() for _ in range(n)]
    for s in out:
        await s.start()
    try:
        yield out
    finally:
        for s in out:
            await s.aclose()


async def settle() -> None:
    await asyncio.sleep(0.15)  # longer than a Redis waiter's poll


class Grants:
    """Waiters on one node, in tasks; the order in which they got a slot."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.order: list[str] = []
        self.leases: dict[str, tuple[SlotStore, str]] = {}
        self.tasks: dict[str, asyncio.Task[tuple[int, str] | None]] = {}

    def wait(self, store: SlotStore, name: str, who: Claim, max_queue: int = 50) -> None:
        async def run() -> tuple[int, str] | None:
            got = await store.take(self.key, 1, max_queue, 20, who)
            if got is not None and got[0] == GRANTED:
                self.order.append(name)
                self.leases[name] = (store, got[1])
            return got

        self.tasks[name] = asyncio.create_task(run())

    async def next(self) -> str:
        """Give back the slot of the last one granted; the name of the next one."""
        last = self.order[-1]
        store, lease = self.leases.pop(last)
        n = len(self.order)
        store.give(self.key, lease)
        for _ in range(200):
            if len(self.order) > n:
                return self.order[-1]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no waiter got the slot after {last} ({self.order})")


async def fairness(make: Factory) -> None:
    async with stores(make, 3) as (a, b, c):
        # Priority: whoever arrived first, high goes before normal before low.
        g = Grants("fair:prio")
        g.wait(a, "holder", Claim("x", NORMAL, 1))
        await settle()
        for name, store, prio in (("low", b, LOW), ("normal", c, NORMAL), ("high", a, HIGH)):
            g.wait(store, name, Claim(name, prio, 1))
            await settle()
        assert [await g.next() for _ in range(3)] == ["high", "normal", "low"]
        store, lease = g.leases.pop("low")
        store.give(g.key, lease)

        # Weights 3:1 across workers: key B (weight 1) queued six, then key A (weight 3) six:
        # of the first eight handed on, six are A's (in arrival order, two would be).
        g = Grants("fair:weights")
        g.wait(c, "holder", Claim("x", NORMAL, 1))
        await settle()
        for i in range(6):
            g.wait((a, b)[i % 2], f"B{i}", Claim("B", NORMAL, 1))
        await settle()
        for i in range(6):
            g.wait((a, b)[i % 2], f"A{i}", Claim("A", NORMAL, 3))
        await settle()
        first = [await g.next() for _ in range(8)]
        assert sum(n.startswith("A") for n in first) == 6, first
        for _ in range(4):
            await g.next()
        store, lease = g.leases.pop(g.order[-1])
        store.give(g.key, lease)

        # Shedding: a queue of two lows is full; a high takes the newest low's place (429),
        # another low is refused.
        g = Grants("fair:shed")
        g.wait(a, "holder", Claim("x", NORMAL, 1))
        await settle()
        g.wait(b, "low1", Claim("bulk", LOW, 1), max_queue=2)
        await settle()
        g.wait(c, "low2", Claim("bulk", LOW, 1), max_queue=2)
        await settle()
        assert await a.take(g.key, 1, 2, 5, Claim("bulk", LOW, 1)) == (FULL, "")
        g.wait(a, "high", Claim("vip", HIGH, 1), max_queue=2)
        shed = await asyncio.wait_for(g.tasks["low2"], 3)
        assert shed == (SHED, "")
        assert not g.tasks["low1"].done()
        assert await b.take(g.key, 1, 2, 5, Claim("other", LOW, 1)) == (FULL, "")
        assert [await g.next(), await g.next()] == ["high", "low1"]
        store, lease = g.leases.pop("low1")
        store.give(g.key, lease)

        # A waiter that leaves frees its place at once: a queue of one takes the next.
        g = Grants("fair:leave")
        g.wait(a, "holder", Claim("x", NORMAL, 1))
        await settle()
        g.wait(b, "gone", Claim("x", NORMAL, 1), max_queue=1)
        await settle()
        g.tasks["gone"].cancel()
        with pytest.raises(asyncio.CancelledError):
            await g.tasks["gone"]
        await settle()
        g.wait(c, "next", Claim("y", LOW, 1), max_queue=1)
        await settle()
        assert not g.tasks["next"].done()
        assert await g.next() == "next"
        store, lease = g.leases.pop("next")
        store.give(g.key, lease)
        await settle()


def test_fair_order_in_the_main_process(tmp_path: Path) -> None:
    path = str(tmp_path / "limits.sock")
    start_server(path)
    asyncio.run(fairness(lambda: SharedSlots(path)))


def test_fair_order_in_redis(tmp_path: Path) -> None:
    with run_redis(tmp_path) as server:
        asyncio.run(fairness(lambda: RedisSlots(server.url)))
