"""Fair admission holds wherever slots are counted: the main process's table for the workers
of a router and Redis for replicas answer waiters in the same order: priority first, then
weighted fair share by key; a full queue sheds its newest lowest-priority waiter for a higher
priority; a waiter that leaves frees its place at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from airouter.backends.node_slots import FULL, GRANTED, SHED, SlotStore
from airouter.fairness.claim import Claim
from airouter.fairness.scheduler import HIGH, LOW, NORMAL
from airouter.limits.node_redis import RedisSlots
from airouter.limits.shared import SharedSlots
from airouter.limits.shared_server import start_server
from tests.integration.test_node_slots_store import Factory, settle, stores
from tests.support.redis import run_redis


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


async def one_queue_per_backend(make: Factory, exact: bool) -> None:
    """Two nodes of one slot, one queue: a waiter gets the first slot freed on any node it
    may use, in priority order; (`exact`) a waiter that may use one node only is passed over
    for a slot of the other."""
    nodes = ["pw:n1", "pw:n2"]
    async with stores(make, 2) as (a, b):
        h1 = await a.take_any("pw", nodes, 1, 10, 5, Claim("x", NORMAL, 1))
        h2 = await b.take_any("pw", nodes, 1, 10, 5, Claim("x", NORMAL, 1))
        assert h1 is not None and h2 is not None
        assert (h1[0], h1[2], h2[0], h2[2]) == (GRANTED, 0, GRANTED, 1)  # the first free

        def wait(store: SlotStore, keys: list[str], who: Claim) -> asyncio.Task[Any]:
            return asyncio.create_task(store.take_any("pw", keys, 1, 10, 20, who))

        low = wait(a, nodes, Claim("bulk", LOW, 1))
        await settle()
        only1 = wait(b, ["pw:n1"], Claim("vip", HIGH, 1)) if exact else None
        await settle()
        high = wait(a, ["pw:n2", "pw:n1"], Claim("chat", HIGH, 1))
        await settle()
        b.give(nodes[1], h2[1])  # n2 frees: the high waiter that may use it gets it
        got = await asyncio.wait_for(high, 3)
        assert got[0] == GRANTED and got[2] == 0, got
        assert not low.done()
        a.give(nodes[0], h1[1])  # n1 frees: a high waiter (if any) before the low one
        if only1 is not None:
            first = await asyncio.wait_for(only1, 3)
            assert first[0] == GRANTED and first[2] == 0
            await settle()
            assert not low.done()
            b.give(nodes[0], first[1])
        last = await asyncio.wait_for(low, 3)
        assert last[0] == GRANTED and last[2] == 0
        a.give(nodes[0], last[1])
        a.give(nodes[1], got[1])
        await settle()
        assert await b.take_any("pw", nodes, 1, 0, 1) is not None  # nothing leaked:
        again = await a.take_any("pw", nodes, 1, 0, 1)
        assert again is not None and again[0] == GRANTED  # two slots free again


def test_fair_order_in_the_main_process(tmp_path: Path) -> None:
    path = str(tmp_path / "limits.sock")
    start_server(path)
    asyncio.run(fairness(lambda: SharedSlots(path)))
    asyncio.run(one_queue_per_backend(lambda: SharedSlots(path), exact=True))


def test_fair_order_in_redis(tmp_path: Path) -> None:
    with run_redis(tmp_path) as server:
        asyncio.run(fairness(lambda: RedisSlots(server.url)))
        asyncio.run(one_queue_per_backend(lambda: RedisSlots(server.url), exact=False))
