"""A simulated LLM engine, in time rather than compute: a prefix cache of 16-token blocks with
LRU eviction, one prefill at a time costing time per uncached token, decode slots. Served over
OpenAI HTTP by sim_node.py and as a Triton Python-backend model by triton_sim/sim/1/model.py.
Only the standard library and xxhash: the Triton stub imports it too."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import xxhash

CHARS_PER_TOKEN = 4
BLOCK_TOKENS = 16
BLOCK_CHARS = BLOCK_TOKENS * CHARS_PER_TOKEN


@dataclass
class NodeParams:
    cache_tokens: int = 12_000  # KV cache capacity
    prefill_s_per_token: float = 0.0001  # 0.1 ms per uncached token
    prefill_base_s: float = 0.002
    decode_slots: int = 32
    step_s: float = 0.02  # one decode step (a token for every running request)
    step_alpha: float = 0.005  # step time grows with the batch: step_s * (1 + alpha * batch)


@dataclass
class NodeStats:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    busy_prefill_s: float = 0.0
    in_flight_area: float = 0.0  # integral of in-flight over time, for time-averaged load
    started: float = field(default_factory=time.monotonic)


class SimEngine:
    """One node's engine. `on_change` (if set) hears every change of its queue or batch."""

    def __init__(self, params: NodeParams) -> None:
        self.p = params
        self.cache: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.capacity = max(1, params.cache_tokens // BLOCK_TOKENS)
        self.prefill_lock = asyncio.Lock()
        self.waiting = 0
        self.running = 0
        self.slots = asyncio.Semaphore(params.decode_slots)
        self.stats = NodeStats()
        self._last = time.monotonic()
        self.on_change: Callable[[], None] | None = None

    def account(self) -> None:
        now = time.monotonic()
        self.stats.in_flight_area += (self.waiting + self.running) * (now - self._last)
        self._last = now
        if self.on_change is not None:
            self.on_change()

    @staticmethod
    def blocks(data: bytes) -> list[int]:
        out, h = [], 0
        for i in range(0, len(data) - BLOCK_CHARS + 1, BLOCK_CHARS):
            h = xxhash.xxh3_64_intdigest(data[i : i + BLOCK_CHARS], h)
            out.append(h)
        return out

    def _lookup(self, blocks: list[int]) -> int:
        n = 0
        for b in blocks:
            if b not in self.cache:
                break
            n += 1
        return n

    def _store(self, blocks: list[int]) -> None:
        for b in blocks:
            if b in self.cache:
                self.cache.move_to_end(b)
            else:
                self.cache[b] = None
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)

    async def prefill(self, prompt: bytes) -> tuple[int, int]:
        """Queue for the prefill, then pay for the uncached tokens: (prompt, cached) tokens."""
        tokens = max(1, len(prompt) // CHARS_PER_TOKEN)
        blocks = self.blocks(prompt)
        self.waiting += 1
        self.account()
        try:
            async with self.prefill_lock:
                # The cache is read when the prefill starts: blocks stored meanwhile count.
                cached = self._lookup(blocks) * BLOCK_TOKENS
                cost = self.p.prefill_base_s + (tokens - cached) * self.p.prefill_s_per_token
                await asyncio.sleep(cost)
                self.stats.busy_prefill_s += cost
                self._store(blocks)
        finally:
            self.waiting -= 1
            self.account()
        self.stats.requests += 1
        self.stats.prompt_tokens += tokens
        self.stats.cached_tokens += cached
        return tokens, cached

    @contextlib.asynccontextmanager
    async def decoding(self) -> AsyncIterator[None]:
        """Hold a decode slot (the batch) while the answer is generated."""
        async with self.slots:
            self.running += 1
            self.account()
            try:
                yield
            finally:
                self.running -= 1
                self.account()

    def step(self) -> float:
        return self.p.step_s * (1 + self.p.step_alpha * self.running)

    def reset(self) -> None:
        self.cache.clear()
        self.stats = NodeStats()
        self._last = time.monotonic()
        self.account()

    def stats_dict(self) -> dict[str, float]:
        self.account()
        s = self.stats
        return {"requests": s.requests, "prompt_tokens": s.prompt_tokens,
                "cached_tokens": s.cached_tokens, "busy_prefill_s": s.busy_prefill_s,
                "in_flight_area": s.in_flight_area, "elapsed": time.monotonic() - s.started}
