"""The cost of limits per request: admission, the end-of-request charge and the release, with
the counters in this process, in the main process over a unix socket (workers without Redis),
and in a real redis-server (skipped when none is installed).

Each round runs ROUND requests on one event loop, one after another ("seq": the latency a
request pays) or as CONCURRENT overlapping tasks ("conc": what a busy worker pays; Redis calls
are then shared). Divide the reported time by ROUND for one request. extra_info
cpu_us_per_request is this process's CPU per request: the worker's share, without the store's
own time (the server thread, redis-server)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from airouter import config
from airouter.backends.base import Stats
from airouter.limits import Limiter
from airouter.limits.shared import SOCKET_ENV
from airouter.limits.shared_server import start_server
from airouter.state import State
from bench import bodies
from tests.support.redis import run_redis

ROUND = 128
CONCURRENT = 32
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


def _measure(benchmark: BenchmarkFixture, server: str, concurrent: int) -> None:
    cfg = config.parse(CONFIG.format(server=server))
    state = State.build(cfg)
    target = state.models.lookup(bodies.ALIAS_SSE)
    assert target is not None
    loop = asyncio.new_event_loop()
    limiter = Limiter(cfg)
    loop.run_until_complete(limiter.start())
    stats = Stats(prompt_tokens=60, completion_tokens=20)

    async def some(count: int) -> int:
        n = 0
        for _ in range(count):
            ticket = await limiter.admit("team", target, dict(BODY))
            ticket.chunk(b"data: {}\n\n")
            await ticket.settle(stats)
            ticket.release(stats)
            n += bool(ticket.headers)
        return n

    async def requests() -> int:
        counts = await asyncio.gather(*(some(ROUND // concurrent) for _ in range(concurrent)))
        return sum(counts)

    cpu = time.process_time()
    try:
        admitted = benchmark.pedantic(lambda: loop.run_until_complete(requests()),
                                      rounds=20, warmup_rounds=2)
        benchmark.extra_info["cpu_us_per_request"] = round(
            (time.process_time() - cpu) / (22 * ROUND) * 1e6, 1
        )
        assert admitted == ROUND  # every request admitted and given its x-ratelimit headers
    finally:
        loop.run_until_complete(limiter.aclose())
        loop.close()


MODES = pytest.mark.parametrize("concurrent", [1, CONCURRENT], ids=["seq", "conc"])


@MODES
def test_limits_in_process(benchmark: BenchmarkFixture, concurrent: int) -> None:
    os.environ.pop(SOCKET_ENV, None)
    _measure(benchmark, "", concurrent)


@pytest.fixture(scope="module")
def socket_path() -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="airouter-bench-"), "limits.sock")
    start_server(path)
    return path


@MODES
def test_limits_shared_by_workers(
    benchmark: BenchmarkFixture, socket_path: str, concurrent: int
) -> None:
    os.environ[SOCKET_ENV] = socket_path
    try:
        _measure(benchmark, "", concurrent)
    finally:
        os.environ.pop(SOCKET_ENV, None)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with run_redis(Path(tempfile.mkdtemp(prefix="airouter-bench-"))) as server:
        yield server.url


@MODES
def test_limits_in_redis(benchmark: BenchmarkFixture, redis_url: str, concurrent: int) -> None:
    _measure(benchmark, f'redis_url = "{redis_url}"', concurrent)
