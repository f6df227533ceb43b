"""Node slots shared by workers (the main process's table over its unix socket) and by
replicas (Redis) answer alike: a limit never exceeded, a bounded FIFO queue, timeouts,
cancellation, and slots freed when their holder dies."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from airouter.backends.node_slots import FULL, GRANTED, TIMEOUT, SlotStore
from airouter.limits.node_redis import RedisSlots
from airouter.limits.shared import SharedSlots
from airouter.limits.shared_server import start_server
from tests.support.redis import run_redis

KEY = "fake:127.0.0.1:1:abcd"
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


async def contract(make: Factory) -> None:
    async with stores(make, 3) as (a, b, c):
        # Two workers take the two slots; the next two wait in arrival order, the third is
        # refused: the queue (max 2) is the node's, not a worker's.
        got = [await a.take(KEY, 2, 2, 5), await b.take(KEY, 2, 2, 5)]
        assert [g[0] for g in got if g] == [GRANTED, GRANTED]
        first = asyncio.create_task(c.take(KEY, 2, 2, 5))
        await settle()
        second = asyncio.create_task(a.take(KEY, 2, 2, 5))
        await settle()
        assert await b.take(KEY, 2, 2, 5) == (FULL, "")
        assert not first.done() and not second.done()
        # A freed slot goes to the first waiter, the next one to the second.
        a.give(KEY, got[0][1])  # type: ignore[index]
        f = await asyncio.wait_for(first, 2)
        assert f is not None and f[0] == GRANTED and not second.done()
        b.give(KEY, got[1][1])  # type: ignore[index]
        s = await asyncio.wait_for(second, 2)
        assert s is not None and s[0] == GRANTED
        # Full again: a waiter gives up after its queue_timeout and leaves the queue.
        t0 = time.monotonic()
        assert await b.take(KEY, 2, 2, 0.3) == (TIMEOUT, "")
        assert 0.25 <= time.monotonic() - t0 < 1.5
        # A cancelled waiter (a client that went away) takes nothing when a slot frees.
        gone = asyncio.create_task(b.take(KEY, 2, 2, 5))
        await settle()
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        waiter = asyncio.create_task(a.take(KEY, 2, 1, 5))  # max_queue 1: the queue is empty
        await settle()
        c.give(KEY, f[1])
        w = await asyncio.wait_for(waiter, 2)
        assert w is not None and w[0] == GRANTED
        # Held now: s (a) and w (a). Given back, both slots are free for anyone.
        a.give(KEY, s[1])
        a.give(KEY, w[1])
        await settle()
        again = [await c.take(KEY, 2, 0, 1), await b.take(KEY, 2, 0, 1)]
        assert [g[0] for g in again if g] == [GRANTED, GRANTED]
        for store, g in zip((c, b), again, strict=True):
            assert g is not None
            store.give(KEY, g[1])
        await settle()


def test_worker_slots_in_the_main_process(tmp_path: Path) -> None:
    path = str(tmp_path / "limits.sock")
    start_server(path)
    asyncio.run(contract(lambda: SharedSlots(path)))

    async def died() -> None:
        # A worker's slots and its place in a queue end with its connection.
        async with stores(lambda: SharedSlots(path), 2) as (a, b):
            held = [await a.take(KEY, 2, 5, 5), await a.take(KEY, 2, 5, 5)]
            assert all(h is not None and h[0] == GRANTED for h in held)
            queued = asyncio.create_task(a.take(KEY, 2, 5, 5))
            await settle()
            waiting = asyncio.create_task(b.take(KEY, 2, 5, 5))
            await settle()
            await a.aclose()  # as when its process is killed
            with contextlib.suppress(Exception):
                await queued
            got = await asyncio.wait_for(waiting, 2)
            assert got is not None and got[0] == GRANTED
            assert (await b.take(KEY, 2, 0, 1))[0] == GRANTED  # type: ignore[index]

    asyncio.run(died())


def test_replica_slots_in_redis(tmp_path: Path) -> None:
    with run_redis(tmp_path) as server:
        asyncio.run(contract(lambda: RedisSlots(server.url)))

        async def died() -> None:
            # Leases of 1 s: a live replica keeps its slot by renewing it; a dead one's
            # frees itself after the TTL, and a waiter then gets it.
            async with stores(lambda: RedisSlots(server.url, lease_ttl=1.0), 3) as (a, b, c):
                kept = await a.take(KEY, 2, 5, 5)
                lost = await b.take(KEY, 2, 5, 5)
                assert kept is not None and lost is not None
                assert b._renewer is not None
                b._renewer.cancel()  # b dies: it neither renews nor gives back
                b.held.clear()
                t0 = time.monotonic()
                got = await c.take(KEY, 2, 5, 5)
                waited = time.monotonic() - t0
                assert got is not None and got[0] == GRANTED and 0.5 <= waited < 2.5
                await asyncio.sleep(1.5)  # a's lease outlived its TTL: renewed
                assert await c.take(KEY, 2, 5, 0.3) == (TIMEOUT, "")
                a.give(KEY, kept[1])
                c.give(KEY, got[1])

        asyncio.run(died())


def test_unreachable_redis_answers_none(tmp_path: Path) -> None:
    from tests.support.procs import free_port

    async def main() -> None:
        store = RedisSlots(f"redis://127.0.0.1:{free_port()}/0")
        await store.start()
        try:
            assert await store.take(KEY, 2, 5, 5) is None
            t0 = time.monotonic()
            assert await store.take(KEY, 2, 5, 5) is None  # skipped for a second: no wait
            assert time.monotonic() - t0 < 0.05
        finally:
            await store.aclose()

    asyncio.run(main())


def test_a_pool_gives_back_every_slot(tmp_path: Path) -> None:
    """Whatever way a call on a node ends, its slot in the shared table is given back."""
    from airouter.backends.base import Reply
    from airouter.backends.failover import with_failover
    from airouter.backends.node import NodeSpec
    from airouter.backends.nodes import NodePool
    from airouter.errors import RouterError

    path = str(tmp_path / "limits.sock")
    start_server(path)

    async def main() -> None:
        pool = NodePool("b", [NodeSpec("http://127.0.0.1:1/v1")], max_concurrent=1,
                        max_queue=1, queue_timeout=5)
        node = pool.nodes[0]
        async with stores(lambda: SharedSlots(path), 2) as (mine, probe):
            pool.slots = mine

            async def free() -> None:
                await settle()
                got = await probe.take(node.key, 1, 0, 1)
                assert got is not None and got[0] == GRANTED, "a slot leaked"
                probe.give(node.key, got[1])
                await settle()
                assert node.in_flight == 0

            async def refused(n: object) -> Reply:
                raise RouterError("no", status=400)

            with pytest.raises(RouterError):
                await with_failover(pool, 0, refused)
            await free()

            async def forever(n: object) -> Reply:
                await asyncio.sleep(60)
                raise AssertionError

            call = asyncio.create_task(with_failover(pool, 0, forever))
            await settle()
            assert node.in_flight == 1
            # A second call queues (in the table, seen in health), then its client goes away.
            queued = asyncio.create_task(pool.acquire(node))
            await settle()
            assert node.status()["queued"] == 1
            queued.cancel()
            call.cancel()
            await asyncio.gather(call, queued, return_exceptions=True)
            assert node.status()["queued"] == 0
            await free()

            async def ok(n: object) -> Reply:
                return Reply(body=b"{}")

            reply = await with_failover(pool, 0, ok)
            assert node.in_flight == 1
            await reply.aclose()
            await free()

    asyncio.run(main())
