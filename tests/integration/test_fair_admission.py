"""Fair admission with real routers: when a node's slots are taken, waiting requests are
granted by priority, then by weight across keys, with 1 and 2 workers and across replicas
sharing a Redis; a full queue sheds its newest low-priority waiter (429 queue_shed); the wait
shows in the access log, /v1/usage and /metrics; SIGTERM lets the queue drain within
shutdown_grace and answers the waiters past it 503.

The upstream answers only when the test lets it (tests.support.gated_upstream), so what
reaches it, in order, is the order the router granted the slot in: no timing asserts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.gated_upstream import GatedUpstream, gated_upstream
from tests.support.redis import run_redis
from tests.support.router import run_router

KEYS = {"bulk": "k-bulk", "vip": "k-vip", "a": "k-a", "b": "k-b"}


def config(up: GatedUpstream, queue: int, server: str = "") -> str:
    return f"""
[server]
{server}
[keys.bulk]
key = "k-bulk"
priority = "low"
[keys.vip]
key = "k-vip"
priority = "high"
[keys.a]
key = "k-a"
weight = 3
[keys.b]
key = "k-b"

[backends.gpu]
type = "openai"
base_url = "{up.url}"
health_interval = 0
retries = 0
max_concurrent = 1
max_queue = {queue}
queue_timeout = 60

[models.m]
backend = "gpu"
"""


async def ask(url: str, key: str, name: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request on a connection of its own (so requests spread over workers)."""
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s, s.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEYS[key]}"},
        json={"model": "m", "messages": [{"role": "user", "content": name}]},
    ) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def metric(urls: list[str], name: str, **labels: str) -> float:
    """A metric's value summed over the routers' /metrics (every label given must match)."""
    total = 0.0
    async with aiohttp.ClientSession() as s:
        for url in urls:
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
                if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
                    total += float(m.group(2))
    return total


async def queued(urls: list[str], n: int, priority: str) -> None:
    """Wait until n requests of `priority` wait in the routers' queues."""
    for _ in range(400):
        if await metric(urls, "airouter_queue_length", priority=priority) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {n} {priority} requests queued")


async def send(url: str, key: str, name: str) -> asyncio.Task[Any]:
    return asyncio.create_task(ask(url, key, name))


async def priority_and_shedding(up: GatedUpstream, urls: list[str]) -> list[Any]:
    """A low-priority flood fills the node and its queue of three; a high-priority request
    displaces the newest waiter and goes next."""
    hold = await send(urls[0], "bulk", "hold")
    await asyncio.to_thread(up.wait_seen, 1)
    bulk = []
    for i in range(3):
        bulk.append(await send(urls[i % len(urls)], "bulk", f"bulk{i}"))
        await queued(urls, i + 1, "low")
    vip = await send(urls[-1], "vip", "vip")
    shed = [t for t in await asyncio.wait(bulk, timeout=20, return_when="FIRST_COMPLETED")][0]
    assert len(shed) == 1
    status, body, headers = next(iter(shed)).result()
    assert status == 429 and body["error"]["code"] == "queue_shed" and headers["Retry-After"]
    await queued(urls, 1, "high")
    up.release(1)  # the holder ends: the high-priority request goes next
    seen = await asyncio.to_thread(up.wait_seen, 2)
    assert seen == ["hold", "vip"]
    up.release(1)
    seen = await asyncio.to_thread(up.wait_seen, 3)
    assert seen[2].startswith("bulk")
    up.release_all()
    results = await asyncio.gather(hold, vip, *[t for t in bulk if not t.done()])
    assert [r[0] for r in results] == [200] * len(results)
    # Each worker writes its metrics in batches: wait for the one that shed to write them.
    for _ in range(100):
        shed_total = await metric(urls, "airouter_queue_shed_total", key="bulk", priority="low")
        if shed_total >= 1:
            break
        await asyncio.sleep(0.05)
    assert shed_total == 1
    return results


@pytest.mark.parametrize("workers", [1, 2])
def test_high_priority_goes_first_and_sheds_the_newest_low(workers: int, tmp_path: Path) -> None:
    with gated_upstream() as up, run_router(config(up, 3), tmp_path, workers=workers) as router:
        asyncio.run(priority_and_shedding(up, [router.url]))

        async def usage() -> dict[str, Any]:
            async with aiohttp.ClientSession() as s, s.get(
                router.url + "/v1/usage", headers={"Authorization": "Bearer k-vip"}
            ) as r:
                return await r.json()  # type: ignore[no-any-return]

        async def waited() -> int:
            for _ in range(100):  # the per-key totals reach the store once a second
                body = await usage()
                if body["keys"][0]["queue"]["wait_ms"] > 0:
                    return body["keys"][0]["queue"]["wait_ms"]  # type: ignore[no-any-return]
                await asyncio.sleep(0.1)
            raise AssertionError(body)

        assert asyncio.run(waited()) > 0
        lines = [json.loads(line[line.index("{"):]) for line in router.log_text().splitlines()
                 if "airouter.access" in line and '"path"' in line]
        vip = [entry for entry in lines if entry.get("key") == "vip"]
        assert vip and vip[0]["queue_ms"] > 0 and vip[0]["status"] == 200
        shed = [entry for entry in lines if entry.get("error") == "queue_shed"]
        assert len(shed) == 1 and shed[0]["status"] == 429 and shed[0]["key"] == "bulk"


def test_weights_share_a_full_node_three_to_one(tmp_path: Path) -> None:
    """Key b (weight 1) queues six, then key a (weight 3) six, over two workers: of the first
    eight requests granted, six are a's (in arrival order it would be two)."""
    with gated_upstream() as up, run_router(config(up, 20), tmp_path, workers=2) as router:
        async def main() -> list[str]:
            url = router.url
            hold = await send(url, "b", "hold")
            await asyncio.to_thread(up.wait_seen, 1)
            tasks = [hold]
            for i in range(6):
                tasks.append(await send(url, "b", f"b{i}"))
                await queued([url], i + 1, "normal")
            for i in range(6):
                tasks.append(await send(url, "a", f"a{i}"))
                await queued([url], 7 + i, "normal")
            for n in range(2, 10):
                up.release(1)
                await asyncio.to_thread(up.wait_seen, n)
            up.release_all()
            assert [r[0] for r in await asyncio.gather(*tasks)] == [200] * 13
            return up.seen

        seen = asyncio.run(main())
        first = seen[1:9]
        assert sum(name.startswith("a") for name in first) == 6, seen


def test_priorities_hold_across_replicas_sharing_redis(tmp_path: Path) -> None:
    with run_redis(tmp_path) as server, gated_upstream() as up:
        cfg = config(up, 3, f'redis_url = "{server.url}"')
        with run_router(cfg, tmp_path) as r1, run_router(cfg, tmp_path, workers=2) as r2:
            asyncio.run(priority_and_shedding(up, [r1.url, r2.url]))


def test_sigterm_drains_the_queue_within_the_grace_then_503(tmp_path: Path) -> None:
    with gated_upstream() as up, run_router(
        config(up, 5, "shutdown_grace = 2"), tmp_path, workers=1
    ) as router:
        async def main() -> list[Any]:
            url = [router.url]
            hold = await send(router.url, "bulk", "hold")
            await asyncio.to_thread(up.wait_seen, 1)
            first = await send(router.url, "bulk", "first")
            await queued(url, 1, "low")
            late = await send(router.url, "bulk", "late")
            await queued(url, 2, "low")
            os.kill(router.proc.pid, signal.SIGTERM)
            await asyncio.sleep(0.3)
            up.release(1)  # the holder ends: the first waiter gets the slot, within the grace
            await asyncio.to_thread(up.wait_seen, 2)
            # "first" is held by the upstream past the grace, "late" never leaves the queue.
            return list(await asyncio.gather(hold, first, late))

        (hold, first, late) = asyncio.run(main())
        assert hold[0] == 200
        assert up.seen == ["hold", "first"]
        assert late[0] == 503 and late[1]["error"]["code"] == "shutting_down"
        assert first[0] == 503
        assert router.proc.wait(20) == 0


