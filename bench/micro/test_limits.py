"""The cost of limits per request: admission, the end-of-request charge and the release, with
the counters in this process, in the main process over a unix socket (workers without Redis),
and in a real redis-server (skipped when none is installed).

Each round runs ROUND requests one after another on one event loop; divide the reported time
by ROUND for the cost of one request's limits (the overhead a worker pays, not counting the
store's own time when requests overlap)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from airouter import config
from airouter.backends.base import Stats
from airouter.limits import Limiter
from airouter.limits.shared import SOCKET_ENV, start_server
from airouter.state import State
from bench import bodies
from tests.support.redis import run_redis

ROUND = 100
CONFIG = f"""
[server]
{{server}}

[keys.team]
key = "{bodies.CLIENT_KEY}"
rpm = 1000000000
tpm = 1000000000
max_concurrent = 100000
budget_tokens = 1000000000000
budget_period = "month"

[backends.up]
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[models.{bodies.ALIAS_SSE}]
backend = "up"
backend_model = "{bodies.UPSTREAM_MODEL}"
rpm = 1000000000
"""
BODY = {"model": bodies.ALIAS_SSE,
        "messages": [{"role": "user", "content": "What is the capital of France? " * 8}]}


def _measure(benchmark: BenchmarkFixture, server: str) -> None:
    cfg = config.parse(CONFIG.format(server=server))
    state = State.build(cfg)
    target = state.models.lookup(bodies.ALIAS_SSE)
    assert target is not None
    loop = asyncio.new_event_loop()
    limiter = Limiter(cfg)
    loop.run_until_complete(limiter.start())
    stats = Stats(prompt_tokens=60, completion_tokens=20)

    async def requests() -> int:
        n = 0
        for _ in range(ROUND):
            ticket = await limiter.admit("team", target, dict(BODY))
            ticket.chunk(b"data: {}\n\n")
            await ticket.settle(stats)
            ticket.release(stats)
            n += bool(ticket.headers)
        return n

    try:
        admitted = benchmark.pedantic(lambda: loop.run_until_complete(requests()),
                                      rounds=20, warmup_rounds=2)
        assert admitted == ROUND  # every request admitted and given its x-ratelimit headers
    finally:
        loop.run_until_complete(limiter.aclose())
        loop.close()


def test_limits_in_process(benchmark: BenchmarkFixture) -> None:
    os.environ.pop(SOCKET_ENV, None)
    _measure(benchmark, "")


def test_limits_shared_by_workers(benchmark: BenchmarkFixture) -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="airouter-bench-"), "limits.sock")
    start_server(path)
    os.environ[SOCKET_ENV] = path
    try:
        _measure(benchmark, "")
    finally:
        os.environ.pop(SOCKET_ENV, None)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with run_redis(Path(tempfile.mkdtemp(prefix="airouter-bench-"))) as server:
        yield server.url


def test_limits_in_redis(benchmark: BenchmarkFixture, redis_url: str) -> None:
    _measure(benchmark, f'redis_url = "{redis_url}"')
