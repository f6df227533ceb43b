"""A node pool counting its slots in its own process queues fairly: priority, weights,
shedding (429 queue_shed), a waiter that leaves, per-priority timeouts, and what it tells its
observer and the request's stats."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airouter.backends.base import Stats
from airouter.backends.nodes import NodePool, NodeSpec
from airouter.errors import RateLimited, ServiceUnavailable
from airouter.fairness.claim import Claim, claim, claim_var
from airouter.fairness.scheduler import HIGH, LOW, NORMAL
from airouter.share_config import ShareConfig


class Heard:
    def __init__(self) -> None:
        self.waits: list[tuple[str, int, str]] = []
        self.length: dict[int, int] = {}

    def node_state(self, *a: Any) -> None: ...
    def prefix_cache(self, *a: Any) -> None: ...
    def engine_load(self, *a: Any) -> None: ...
    def stream_resume(self, *a: Any) -> None: ...

    def queue_length(self, backend: str, priority: int, delta: int) -> None:
        self.length[priority] = self.length.get(priority, 0) + delta

    def queue_wait(self, backend: str, key: str, priority: int, s: float, outcome: str) -> None:
        self.waits.append((key, priority, outcome))


def one_slot(**kw: Any) -> tuple[NodePool, Heard]:
    heard = Heard()
    pool = NodePool("b", [NodeSpec("http://n:1")], max_concurrent=1, observer=heard, **kw)
    return pool, heard


async def waiter(pool: NodePool, who: Claim, order: list[str], name: str) -> None:
    claim_var.set(who)
    node = pool.nodes[0]
    await pool.acquire(node)
    order.append(name)


async def hand_on(pool: NodePool, order: list[str], n: int) -> None:
    """Release n slots one at a time, each after the previous grant landed."""
    for _ in range(n):
        before = len(order)
        pool.release(pool.nodes[0])
        for _ in range(100):
            await asyncio.sleep(0)
            if len(order) > before:
                break


def test_priority_then_weights_in_one_process() -> None:
    async def main() -> list[str]:
        pool, heard = one_slot()
        await pool.acquire(pool.nodes[0])  # the one slot, held
        order: list[str] = []
        tasks = [asyncio.create_task(waiter(pool, Claim("bulk", LOW, 1), order, "low"))]
        for i in range(4):
            tasks.append(asyncio.create_task(waiter(pool, Claim("B", NORMAL, 1), order, f"B{i}")))
        for i in range(4):
            tasks.append(asyncio.create_task(waiter(pool, Claim("A", NORMAL, 3), order, f"A{i}")))
        tasks.append(asyncio.create_task(waiter(pool, Claim("vip", HIGH, 1), order, "high")))
        await asyncio.sleep(0.01)
        assert heard.length == {LOW: 1, NORMAL: 8, HIGH: 1}
        await hand_on(pool, order, 10)
        await asyncio.gather(*tasks)
        assert heard.length == {LOW: 0, NORMAL: 0, HIGH: 0}
        assert all(o == "granted" for _, _, o in heard.waits)
        return order

    order = asyncio.run(main())
    assert order[0] == "high" and order[-1] == "low"
    # A's four (weight 3) take their rounds before B's second: B0 A0 A1 A2 B1 A3 B2 B3.
    assert order[1:9] == ["B0", "A0", "A1", "A2", "B1", "A3", "B2", "B3"]


def test_a_full_queue_sheds_its_newest_low_waiter_for_a_higher_priority() -> None:
    async def main() -> None:
        pool, heard = one_slot(max_queue=2)
        await pool.acquire(pool.nodes[0])
        order: list[str] = []
        low1 = asyncio.create_task(waiter(pool, Claim("bulk", LOW, 1), order, "low1"))
        low2 = asyncio.create_task(waiter(pool, Claim("bulk", LOW, 1), order, "low2"))
        await asyncio.sleep(0.01)
        with pytest.raises(RateLimited) as full:
            await waiter(pool, Claim("bulk", LOW, 1), order, "low3")
        assert full.value.code == "rate_limit_exceeded"
        high = asyncio.create_task(waiter(pool, Claim("vip", HIGH, 1), order, "high"))
        with pytest.raises(RateLimited) as shed:
            await low2
        assert shed.value.code == "queue_shed" and shed.value.headers["Retry-After"]
        await asyncio.sleep(0.01)
        await hand_on(pool, order, 2)
        await asyncio.gather(low1, high)
        assert order == ["high", "low1"]
        assert ("bulk", LOW, "shed") in heard.waits and ("bulk", LOW, "full") in heard.waits

    asyncio.run(main())


def test_a_waiter_that_leaves_frees_its_place_and_is_told_apart() -> None:
    async def main() -> None:
        pool, heard = one_slot(max_queue=1)
        await pool.acquire(pool.nodes[0])
        order: list[str] = []
        gone = asyncio.create_task(waiter(pool, Claim("a", NORMAL, 1), order, "gone"))
        await asyncio.sleep(0.01)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        nxt = asyncio.create_task(waiter(pool, Claim("b", NORMAL, 1), order, "next"))
        await asyncio.sleep(0.01)
        assert not nxt.done() and len(pool.waiters) == 1
        await hand_on(pool, order, 1)
        await nxt
        assert order == ["next"] and ("a", NORMAL, "left") in heard.waits

    asyncio.run(main())


def test_queue_timeouts_per_priority_and_the_wait_in_the_stats() -> None:
    async def main() -> None:
        pool, heard = one_slot(queue_timeout=30, queue_timeouts=(30, 30, 0.05))
        await pool.acquire(pool.nodes[0])
        stats = Stats()
        claim("bulk", (LOW, None), ShareConfig(), stats)
        with pytest.raises(ServiceUnavailable) as e:
            await pool.acquire(pool.nodes[0])
        assert e.value.code == "queue_timeout" and "0.05s" in e.value.message
        assert stats.queued >= 0.04
        assert heard.waits == [("bulk", LOW, "timeout")]

    asyncio.run(main())


def test_a_claim_takes_the_keys_share_else_the_models() -> None:
    stats = Stats()

    async def main() -> list[tuple[str, int, float]]:
        out = []
        for share, model in (((None, None), ShareConfig()),
                             ((None, None), ShareConfig(priority="low", weight=2)),
                             ((HIGH, None), ShareConfig(priority="low", weight=2)),
                             ((None, 5.0), ShareConfig(priority="high"))):
            claim("k", share, model, stats)
            c = claim_var.get()
            out.append((c.key, c.priority, c.weight))
        return out

    assert asyncio.run(main()) == [("k", NORMAL, 1.0), ("k", LOW, 2.0), ("k", HIGH, 2.0),
                                   ("k", HIGH, 5.0)]
