"""Engine saturation with real routers: while the engine's own metrics (vLLM's names, read
every metrics_interval) say its queue is past `saturation_waiting` or its KV cache fuller
than `saturation_kv`, requests wait in the router's fair queue instead of the engine's FIFO,
and go in priority order when it has room; unreadable metrics hold nothing.

The upstream answers only when the test lets it (tests.support.gated_upstream), so what
reached it, in order, is the order the router let requests through."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_fair_admission import KEYS, ask, queued
from tests.support.gated_upstream import GatedUpstream, gated_upstream
from tests.support.router import run_router

READ = 0.1  # metrics_interval
SETTLE = 1.0  # ten reads: every worker has read what the engine says


def config(up: GatedUpstream) -> str:
    return f"""
[keys.bulk]
key = "{KEYS['bulk']}"
priority = "low"
[keys.vip]
key = "{KEYS['vip']}"
priority = "high"

[backends.gpu]
type = "openai"
base_url = "{up.url}"
health_interval = 0
retries = 0
max_concurrent = 8
metrics_interval = {READ}
saturation_waiting = 4
saturation_kv = 0.9
queue_timeout = 60

[models.m]
backend = "gpu"
"""


def send(url: str, key: str, name: str) -> asyncio.Task[Any]:
    return asyncio.create_task(ask(url, key, name))


async def still(up: GatedUpstream, n: int) -> None:
    """After a few more reads, no more than n requests reached the engine."""
    await asyncio.sleep(SETTLE)
    assert len(up.seen) == n, up.seen


@pytest.mark.parametrize("workers", [1, 2])
def test_requests_wait_in_the_router_while_the_engine_is_saturated(
    workers: int, tmp_path: Path
) -> None:
    with gated_upstream() as up, run_router(config(up), tmp_path, workers=workers) as router:
        async def main() -> None:
            urls = [router.url]
            up.waiting = 10  # the engine queues 10: past 4
            await asyncio.sleep(SETTLE)
            tasks = [send(router.url, "bulk", "bulk0"), send(router.url, "bulk", "bulk1")]
            await queued(urls, 2, "low")
            tasks.append(send(router.url, "vip", "vip"))
            await queued(urls, 1, "high")
            await still(up, 0)
            if workers == 1:
                up.waiting = 3  # room for one per read: the high-priority request first
                seen = await asyncio.to_thread(up.wait_seen, 1)
                assert seen == ["vip"]
            up.waiting, up.kv = 0, 0.95  # the KV cache is full: still held
            await still(up, 1 if workers == 1 else 0)
            up.kv = 0.5  # room: everyone goes
            await asyncio.to_thread(up.wait_seen, 3)
            up.release_all()
            assert [r[0] for r in await asyncio.gather(*tasks)] == [200] * 3

            # Unreadable metrics: the thresholds do not apply.
            up.auto = False
            up.waiting = 10
            await asyncio.sleep(SETTLE)
            late = send(router.url, "bulk", "late")
            await queued(urls, 1, "low")
            await still(up, 3)
            up.waiting = None
            await asyncio.to_thread(up.wait_seen, 4)
            up.release_all()
            assert (await late)[0] == 200

        asyncio.run(main())
