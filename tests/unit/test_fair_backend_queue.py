"""One queue per backend, not per node: a waiter gets the first slot freed on any node it may
use (never one a retry excluded), weights hold across the nodes, and an engine's saturation
holds requests in the router's queue until its metrics say it has room."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airouter.backends.engine_metrics import EngineLoad
from airouter.backends.node import Node
from airouter.backends.nodes import NodePool, NodeSpec
from airouter.config import ConfigError, parse
from airouter.fairness.claim import Claim, claim_var
from airouter.fairness.scheduler import HIGH, LOW, NORMAL, FairQueue


def two_nodes(**kw: Any) -> NodePool:
    return NodePool("b", [NodeSpec("http://n1:1"), NodeSpec("http://n2:1")], **kw)


async def waiter(pool: NodePool, who: Claim, got: list[tuple[str, str]], name: str,
                 exclude: tuple[Node, ...] = ()) -> None:
    claim_var.set(who)
    node, _ = await pool.acquire(pool.nodes[0], exclude)
    got.append((name, node.label))


async def turns() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_waiter_gets_the_first_slot_freed_on_any_node() -> None:
    async def main() -> None:
        pool = two_nodes(max_concurrent=1)
        n1, n2 = pool.nodes
        assert (await pool.acquire(n1))[0] is n1
        assert (await pool.acquire(n1))[0] is n2  # n1 full: the other node's free slot
        got: list[tuple[str, str]] = []
        low = asyncio.create_task(waiter(pool, Claim("bulk", LOW, 1), got, "low"))
        await turns()
        high = asyncio.create_task(waiter(pool, Claim("vip", HIGH, 1), got, "high"))
        await turns()
        assert n1.status()["queued"] == 2 and n2.status()["queued"] == 0
        pool.release(n2)  # n2 frees first: the high one takes it, not n1's next slot
        await turns()
        assert got == [("high", "n2:1")]
        pool.release(n1)
        await asyncio.gather(low, high)
        assert got == [("high", "n2:1"), ("low", "n1:1")]
        assert (n1.in_flight, n2.in_flight) == (1, 1)

    asyncio.run(main())


def test_a_retry_never_gets_a_slot_of_a_node_it_excluded() -> None:
    async def main() -> None:
        pool = two_nodes(max_concurrent=1)
        n1, n2 = pool.nodes
        await pool.acquire(n1)
        await pool.acquire(n2)
        got: list[tuple[str, str]] = []
        retry = asyncio.create_task(
            waiter(pool, Claim("vip", HIGH, 1), got, "retry", exclude=(n2,)))
        await turns()
        other = asyncio.create_task(waiter(pool, Claim("bulk", LOW, 1), got, "other"))
        await turns()
        pool.release(n2)  # the high retry may not use n2: the low one gets it
        await turns()
        assert got == [("other", "n2:1")]
        pool.release(n1)
        await asyncio.gather(retry, other)
        assert got[1] == ("retry", "n1:1")

    asyncio.run(main())


def test_weights_hold_across_the_nodes_of_a_backend() -> None:
    """Keys a (weight 3) and b (1) keep 12 waiting each on two nodes of one slot: slots freed
    on either node go 3:1, not per node."""

    async def main() -> list[str]:
        pool = two_nodes(max_concurrent=1)
        n1, n2 = pool.nodes
        await pool.acquire(n1)
        await pool.acquire(n2)
        order: list[tuple[str, str]] = []
        tasks = []
        for _ in range(12):
            for key, weight in (("b", 1.0), ("a", 3.0)):
                tasks.append(asyncio.create_task(
                    waiter(pool, Claim(key, NORMAL, weight), order, key)))
        await turns()
        for i in range(16):
            pool.release((n1, n2)[i % 2])
            await turns()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return [name for name, _ in order]

    order = asyncio.run(main())
    assert len(order) == 16
    assert order.count("a") == 12 and order.count("b") == 4, order


def test_pop_passes_over_the_waiters_a_slot_does_not_suit() -> None:
    q: FairQueue[str] = FairQueue()
    for item, prio in (("hi-n1", HIGH), ("lo-any", LOW), ("lo-n1", LOW)):
        q.push(item, item, prio, 1, 10)
    assert q.pop(lambda x: not x.endswith("n1")) == "lo-any"
    assert q.pop() == "hi-n1" and q.pop() == "lo-n1" and q.pop() is None


def read(pool: NodePool, node: Node, waiting: float = 0, kv: float | None = None) -> None:
    pool.engine_read(node, EngineLoad(waiting=waiting, kv_usage=kv, known=True))


def test_saturation_holds_requests_until_the_engine_has_room() -> None:
    async def main() -> None:
        pool = NodePool("b", [NodeSpec("http://n:1")], saturation_waiting=4,
                        saturation_kv=0.9)
        node = pool.nodes[0]
        assert not pool.take_free(node)  # gated, though without max_concurrent
        read(pool, node, waiting=6)  # the engine queues past 4: held
        got: list[tuple[str, str]] = []
        low = asyncio.create_task(waiter(pool, Claim("bulk", LOW, 1), got, "low"))
        await turns()
        high = asyncio.create_task(waiter(pool, Claim("vip", HIGH, 1), got, "high"))
        await turns()
        assert got == [] and node.in_flight == 0
        read(pool, node, waiting=3)  # room for one before the next read
        await turns()
        assert got == [("high", "n:1")]
        read(pool, node, waiting=0, kv=0.95)  # the KV cache is full: still held
        await turns()
        assert len(got) == 1
        pool.engine_read(node, None)  # unreadable: the thresholds do not apply
        await asyncio.gather(low, high)
        assert [name for name, _ in got] == ["high", "low"]
        read(pool, node, waiting=0, kv=0.5)
        assert node.room == -1 and (await pool.acquire(node))[0] is node

    asyncio.run(main())


def test_saturation_with_slots_prefers_the_node_with_room() -> None:
    async def main() -> None:
        pool = two_nodes(max_concurrent=4, saturation_waiting=2)
        n1, n2 = pool.nodes
        read(pool, n1, waiting=5)
        assert pool.pick() is n2
        assert (await pool.acquire(n1))[0] is n2  # n1 is held: n2 takes it

    asyncio.run(main())


def test_saturation_needs_the_engine_metrics() -> None:
    text = """
[backends.b]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
saturation_waiting = 8
[models.m]
backend = "b"
"""
    with pytest.raises(ConfigError, match="backends.b: .*metrics_interval"):
        parse(text)
    cfg = parse(text.replace("saturation_waiting = 8",
                                        "saturation_waiting = 8\nmetrics_interval = 1"))
    assert cfg.backends["b"].saturation_waiting == 8
