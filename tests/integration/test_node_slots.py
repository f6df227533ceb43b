"""A node's max_concurrent and its queue hold for the node as a whole: across the workers of
one router, and across routers sharing a Redis; a dead router's slots come back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.fake_upstream import FakeUpstream
from tests.support.redis import RedisServer, run_redis
from tests.support.router import run_router

CONTENT = "abcdefghijklm"  # "echo: abcdefghijklm": 5 pieces 0.3 s apart, about 1.5 s


class CountingUpstream(FakeUpstream):
    """The fake upstream, counting the requests it serves at once per upstream key."""

    def __init__(self) -> None:
        super().__init__()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    async def _post(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        who = request.headers.get("Authorization", "")
        self.now[who] = self.now.get(who, 0) + 1
        self.peak[who] = max(self.peak.get(who, 0), self.now[who])
        try:
            return await super()._post(request, endpoint)
        finally:
            self.now[who] -= 1

    def reset(self) -> None:
        self.peak = dict(self.now)


@pytest.fixture(scope="module")
def counting() -> Iterator[CountingUpstream]:
    with CountingUpstream() as up:
        yield up


def config(up: FakeUpstream, server: str = "", queue: int = 20, timeout: float = 30) -> str:
    backend = f"""
type = "openai"
base_url = "{up.url}"
health_interval = 0
max_concurrent = 2
max_queue = {queue}
queue_timeout = {timeout}
"""
    return f"""
[server]
{server}
[backends.two]
api_key = "up-two"
{backend}
[backends.one]
api_key = "up-one"
{backend.replace("max_concurrent = 2", "max_concurrent = 1").replace(f"max_queue = {queue}",
                                                                    "max_queue = 1")}
[models.slow]
backend = "two"
backend_model = "fake-slow"
[models.forever]
backend = "two"
backend_model = "fake-disconnect"
[models.tight]
backend = "one"
backend_model = "fake-slow"
"""


async def stream(url: str, model: str = "slow") -> tuple[int, str]:
    """One streamed request on a connection of its own (so requests spread over workers)."""
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s, s.post(
        url + "/v1/chat/completions",
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": CONTENT}]},
    ) as r:
        return r.status, await r.text()


def burst(urls: list[str], n: int, model: str = "slow") -> list[tuple[int, str]]:
    async def main() -> list[tuple[int, str]]:
        return list(await asyncio.gather(*(stream(urls[i % len(urls)], model)
                                           for i in range(n))))

    return asyncio.run(main())


def assert_streamed(text: str) -> None:
    assert '"echo: abcdefghijklm"' not in text  # streamed in pieces
    pieces = [json.loads(line[6:]) for line in text.splitlines()
              if line.startswith("data: {")]
    content = "".join(c["choices"][0]["delta"].get("content") or ""
                      for c in pieces if c.get("choices"))
    assert content == "echo: abcdefghijklm"
    assert pieces[-1]["choices"][0]["finish_reason"] == "stop"
    assert text.rstrip().endswith("data: [DONE]")


def codes(results: list[tuple[int, str]]) -> list[tuple[int, str | None]]:
    return sorted((s, None if s == 200 else json.loads(t)["error"]["code"]) for s, t in results)


def test_one_router_of_two_workers(counting: CountingUpstream, tmp_path: Path) -> None:
    with run_router(config(counting), tmp_path, workers=2) as router:
        # Eight streams at once on a node of two slots: two run, six queue and then run.
        counting.reset()
        t0 = time.monotonic()
        results = burst([router.url], 8)
        assert [s for s, _ in results] == [200] * 8
        for _, text in results:
            assert_streamed(text)
        assert counting.peak["Bearer up-two"] == 2
        assert time.monotonic() - t0 >= 4 * 1.2  # four rounds of two
        # One slot, a queue of one: one runs, one waits, the rest are refused at once.
        counting.reset()
        results = burst([router.url], 6, "tight")
        assert codes(results) == [(200, None), (200, None)] + [(429, "rate_limit_exceeded")] * 4
        assert counting.peak["Bearer up-one"] == 1
        health = asyncio.run(_health(router.url))
        node = health["backends"]["two"]["nodes"][0]
        assert node["in_flight"] == 0 and node["queued"] == 0


async def _health(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
        return await r.json()  # type: ignore[no-any-return]


def test_queue_timeout_across_workers(counting: CountingUpstream, tmp_path: Path) -> None:
    with run_router(config(counting, timeout=1), tmp_path, workers=2) as router:
        counting.reset()
        results = burst([router.url], 3, "tight")
        # The second waits behind the first (about 1.5 s) past its queue_timeout of 1 s; the
        # third finds the queue (of one) full.
        assert codes(results) == [(200, None), (429, "rate_limit_exceeded"),
                                  (503, "queue_timeout")]
        assert counting.peak["Bearer up-one"] == 1


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with run_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def test_two_routers_on_one_redis(
    counting: CountingUpstream, redis: RedisServer, tmp_path: Path
) -> None:
    cfg = config(counting, f'redis_url = "{redis.url}"\nslot_lease_ttl = 2', queue=3, timeout=20)
    with run_router(cfg, tmp_path, workers=2) as a, run_router(cfg, tmp_path, workers=2) as b:
        counting.reset()
        results = burst([a.url, b.url], 8)
        # Two run, three wait (the queue is the node's, across both routers), three refused.
        assert codes(results) == [(200, None)] * 5 + [(429, "rate_limit_exceeded")] * 3
        for status, text in results:
            if status == 200:
                assert_streamed(text)
        assert counting.peak["Bearer up-two"] == 2
        # Router a dies holding both slots (two endless streams). Router b's request waits
        # until a's leases expire (2 s), then runs.
        async def hold_then_kill() -> float:
            holders = [asyncio.create_task(stream(a.url, "forever")) for _ in range(2)]
            deadline = time.monotonic() + 10
            while counting.now.get("Bearer up-two", 0) < 2:
                assert time.monotonic() < deadline, "the endless streams did not start"
                await asyncio.sleep(0.05)
            os.killpg(a.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            status, text = await stream(b.url)
            assert status == 200, text
            assert_streamed(text)
            for h in holders:
                h.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            return time.monotonic() - killed

        took = asyncio.run(hold_then_kill())
        assert 1.5 + 1.0 <= took < 2 + 1.5 + 3  # the lease's TTL, then the 1.5 s stream


def test_redis_away_follows_the_policy(counting: CountingUpstream, tmp_path: Path) -> None:
    from tests.support.procs import free_port

    away = f'redis_url = "redis://127.0.0.1:{free_port()}/0"\n'
    allow = config(counting, away)
    deny = config(counting, away + 'limits_on_redis_failure = "deny"')
    with run_router(allow, tmp_path) as a, run_router(deny, tmp_path) as d:
        # "allow": the worker counts for itself (one slot, a queue of one).
        counting.reset()
        results = burst([a.url], 3, "tight")
        assert codes(results) == [(200, None), (200, None), (429, "rate_limit_exceeded")]
        assert counting.peak["Bearer up-one"] == 1
        status, text = asyncio.run(stream(d.url, "tight"))
        assert status == 503 and json.loads(text)["error"]["code"] == "limits_unavailable"
        assert "Redis at redis://127.0.0.1" in a.log_text()
