"""The cost of fair admission when nothing waits (target <= 5 us a request): the request's
claim (routing.open_call sets it), a slot of a node with max_concurrent counted in this
process, and its release; and the scheduler's own push and pop when requests do wait.
Each round runs ROUND requests; divide the reported time by ROUND."""

from __future__ import annotations

import asyncio

from pytest_benchmark.fixture import BenchmarkFixture

from airouter.backends.base import Stats
from airouter.backends.nodes import NodePool, NodeSpec
from airouter.fairness.claim import claim
from airouter.fairness.scheduler import LOW, NORMAL, FairQueue
from airouter.share_config import ShareConfig

ROUND = 1000


def test_admission_when_nothing_waits(benchmark: BenchmarkFixture) -> None:
    pool = NodePool("b", [NodeSpec("http://n:1")], max_concurrent=4)
    node = pool.nodes[0]
    model = ShareConfig()
    share = (NORMAL, 2.0)
    loop = asyncio.new_event_loop()

    async def requests() -> None:
        for _ in range(ROUND):
            claim("team", share, model, Stats())
            got, lease = await pool.acquire(node)
            pool.release(got, lease)

    benchmark.extra_info["per"] = f"{ROUND} requests"
    benchmark(lambda: loop.run_until_complete(requests()))
    loop.close()
    assert node.in_flight == 0
    per_request_us = benchmark.stats.stats.mean / ROUND * 1e6
    benchmark.extra_info["us_per_request"] = round(per_request_us, 3)
    assert per_request_us <= 5, per_request_us


def test_scheduler_push_and_pop(benchmark: BenchmarkFixture) -> None:
    """ROUND waiters of four keys and two priorities queued, then all granted."""
    keys = ["a", "b", "c", "d"]

    def run() -> None:
        q: FairQueue[int] = FairQueue()
        for i in range(ROUND):
            q.push(i, keys[i & 3], LOW if i & 4 else NORMAL, 1 + (i & 3), ROUND)
        while q.pop() is not None:
            pass

    benchmark.extra_info["per"] = f"{ROUND} waiters"
    benchmark(run)
