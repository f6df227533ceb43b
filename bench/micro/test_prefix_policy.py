"""The prefix-aware balancer's per-request cost: key a 16 KB prompt (the request's JSON from
its messages on, chained xxh3 block hashes) and pick one of 8 nodes (match, choose, index update).
The budget is 20 us per request; the index holds other prefixes as in steady state."""

from __future__ import annotations

import msgspec
from pytest_benchmark.fixture import BenchmarkFixture

from airouter import config
from airouter.backends.node import NodeSpec
from airouter.backends.nodes import NodePool
from airouter.backends.prefix_policy import prompt_start, session_of

URLS = [f"http://10.0.0.{i}:8000/v1" for i in range(8)]
BODY = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "You are a careful assistant. " * 280},  # ~8 KB
        {"role": "user", "content": "Summarise the following text please. " * 220},  # ~8 KB
    ],
}


def _pool(balance: str) -> NodePool:
    cfg = config.OpenAIBackendConfig(balance=balance, urls=list(URLS))  # type: ignore[arg-type]
    pool = NodePool.from_config("b", cfg, [NodeSpec(u) for u in URLS])
    assert pool.prefix is not None
    for g in range(2000):  # other prompts the index remembers
        pool.pick((), pool.prefix.key(f"{g} other prompt ".encode() * 200, "m"))
    return pool


def test_prefix_load_pick_16k_prompt(benchmark: BenchmarkFixture) -> None:
    pool = _pool("prefix_load")
    prefix = pool.prefix
    assert prefix is not None
    data = msgspec.json.encode(BODY)
    assert len(data) >= 16_000

    def route() -> object:
        return pool.pick((), prefix.key(data, "m", session_of(BODY), prompt_start(data)))

    first = route()
    assert benchmark(route) is first


def test_prefix_key_of_a_1mb_prompt_is_bounded(benchmark: BenchmarkFixture) -> None:
    pool = _pool("prefix_load")
    prefix = pool.prefix
    assert prefix is not None
    huge = b"x" * 1_000_000
    key = benchmark(prefix.key, huge, "m")
    assert len(key.hashes) == prefix.max_blocks  # 64 KB keyed, no more
