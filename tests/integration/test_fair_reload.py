"""A reload (SIGHUP) changes the keys' priorities for the requests that come after it; the
requests already waiting keep their places and their priorities, and none is dropped: the
queue lives in the main process's table, which outlives the workers a reload replaces."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_fair_admission import KEYS, ask, metric, queued
from tests.support.gated_upstream import GatedUpstream, gated_upstream
from tests.support.router import run_router


def config(up: GatedUpstream, a: str, b: str) -> str:
    return f"""
[server]
shutdown_grace = 1
[keys.a]
key = "{KEYS['a']}"
priority = "{a}"
[keys.b]
key = "{KEYS['b']}"
priority = "{b}"

[backends.gpu]
type = "openai"
base_url = "{up.url}"
health_interval = 0
retries = 0
max_concurrent = 1
max_queue = 10
queue_timeout = 60

[models.m]
backend = "gpu"
"""


async def serving(url: str) -> None:
    """Until a new connection is answered: on a loaded machine the new workers may still be
    starting when the old ones have closed their listeners."""
    for _ in range(200):
        try:
            conn = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=conn) as s, s.get(
                    url + "/health/live") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("no worker answers after the reload")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_changes_priorities_and_drops_no_waiter(workers: int, tmp_path: Path) -> None:
    with gated_upstream() as up, run_router(
        config(up, "low", "normal"), tmp_path, workers=workers
    ) as router:
        async def main() -> list[str]:
            urls = [router.url]
            tasks = [asyncio.create_task(ask(router.url, "b", "hold"))]
            await asyncio.to_thread(up.wait_seen, 1)
            tasks.append(asyncio.create_task(ask(router.url, "a", "a-low")))
            await queued(urls, 1, "low")
            tasks.append(asyncio.create_task(ask(router.url, "b", "b-normal")))
            await queued(urls, 1, "normal")
            # a becomes high, b low: for the requests after the reload only.
            router.config.write_text(config(up, "high", "low"))
            os.kill(router.proc.pid, signal.SIGHUP)
            for _ in range(200):
                if "reloading" in router.log_text() and await metric(
                        urls, "airouter_config_reloads_total", result="ok") >= 1:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no reload")
            await asyncio.sleep(2)  # past shutdown_grace: the old workers' waiters still wait
            await serving(router.url)
            tasks.append(asyncio.create_task(ask(router.url, "b", "b-low")))
            await queued(urls, 2, "low")
            tasks.append(asyncio.create_task(ask(router.url, "a", "a-high")))
            await queued(urls, 1, "high")
            for n in range(2, 6):
                up.release(1)
                await asyncio.to_thread(up.wait_seen, n)
            up.release_all()
            results = await asyncio.gather(*tasks)
            assert [r[0] for r in results] == [200] * 5, results
            return up.seen

        seen = asyncio.run(main())
        # The waiters' own priorities: a-high, then b-normal (queued before the reload), then
        # the two lows in arrival order.
        assert seen == ["hold", "a-high", "b-normal", "a-low", "b-low"]
