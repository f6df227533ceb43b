"""A simulated OpenAI-compatible LLM node, in time rather than compute: a prefix cache of
16-token blocks with LRU eviction, one prefill queue costing time per uncached token, decode
slots, vLLM's metric names at /metrics and `cached_tokens` in usage (its ground truth).

`python -m bench.routing.sim_node --ports 9001,9002` serves several nodes in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import xxhash
from aiohttp import web

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


def render(body: dict[str, Any]) -> str:
    """The node's own prompt text: roles and contents, as a chat template would."""
    if "messages" in body:
        parts = []
        for m in body["messages"]:
            c = m.get("content")
            if isinstance(c, list):
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
            parts.append(f"<|{m.get('role')}|>{c or ''}")
        return "".join(parts) + "<|assistant|>"
    return str(body.get("prompt", ""))


class SimNode:
    def __init__(self, port: int, params: NodeParams) -> None:
        self.port = port
        self.p = params
        self.cache: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.capacity = max(1, params.cache_tokens // BLOCK_TOKENS)
        self.prefill_lock = asyncio.Lock()
        self.waiting = 0
        self.running = 0
        self.slots = asyncio.Semaphore(params.decode_slots)
        self.stats = NodeStats()
        self._last = time.monotonic()
        self.runner: web.AppRunner | None = None
        self.start_time = time.time()
        self.siblings: list[SimNode] = [self]  # the nodes this process serves

    def _account(self) -> None:
        now = time.monotonic()
        self.stats.in_flight_area += (self.waiting + self.running) * (now - self._last)
        self._last = now

    def _blocks(self, text: str) -> list[int]:
        out, h = [], 0
        data = text.encode()
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

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = render(body)
        tokens = max(1, len(text) // CHARS_PER_TOKEN)
        blocks = self._blocks(text)
        max_tokens = int(body.get("max_tokens") or 16)
        stream = bool(body.get("stream"))
        resp: web.StreamResponse | None = None
        if stream:
            # As vLLM does: the head at once, the first event after the prefill.
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
        self._account()
        self.waiting += 1
        try:
            async with self.prefill_lock:
                # The cache is read when the prefill starts: blocks stored meanwhile count.
                cached = self._lookup(blocks) * BLOCK_TOKENS
                cost = self.p.prefill_base_s + (tokens - cached) * self.p.prefill_s_per_token
                await asyncio.sleep(cost)
                self.stats.busy_prefill_s += cost
                self._store(blocks)
        finally:
            self._account()
            self.waiting -= 1
        self.stats.requests += 1
        self.stats.prompt_tokens += tokens
        self.stats.cached_tokens += cached
        usage = {"prompt_tokens": tokens, "completion_tokens": max_tokens,
                 "total_tokens": tokens + max_tokens,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        async with self.slots:
            self._account()
            self.running += 1
            try:
                if resp is None:
                    for _ in range(max_tokens - 1):
                        await asyncio.sleep(self._step())
                    return web.json_response({
                        "id": f"sim-{self.port}", "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "length", "message": {
                            "role": "assistant", "content": "tok " * max_tokens}}],
                        "usage": usage})
                for i in range(max_tokens):
                    if i:
                        await asyncio.sleep(self._step())
                    chunk = {"id": f"sim-{self.port}", "object": "chat.completion.chunk",
                             "model": body.get("model"), "choices": [{
                                 "index": 0, "delta": {"content": "tok "},
                                 "finish_reason": "length" if i == max_tokens - 1 else None}]}
                    await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                opts = body.get("stream_options") or {}
                if opts.get("include_usage"):
                    tail = {"id": f"sim-{self.port}", "object": "chat.completion.chunk",
                            "model": body.get("model"), "choices": [], "usage": usage}
                    await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
                return resp
            finally:
                self._account()
                self.running -= 1

    def _step(self) -> float:
        return self.p.step_s * (1 + self.p.step_alpha * self.running)

    async def metrics(self, request: web.Request) -> web.Response:
        blocks_per = BLOCK_TOKENS
        text = (
            f'vllm:num_requests_waiting{{model_name="sim"}} {self.waiting}\n'
            f'vllm:num_requests_running{{model_name="sim"}} {self.running}\n'
            f'vllm:kv_cache_usage_perc{{model_name="sim"}} {len(self.cache) / self.capacity}\n'
            f'vllm:cache_config_info{{block_size="{blocks_per}",'
            f'num_gpu_blocks="{self.capacity}"}} 1.0\n'
            f"process_start_time_seconds {self.start_time}\n"
            f"sim_prompt_tokens_total {self.stats.prompt_tokens}\n"
            f"sim_cached_tokens_total {self.stats.cached_tokens}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def stats_json(self, request: web.Request) -> web.Response:
        self._account()
        s = self.stats
        return web.json_response({
            "requests": s.requests, "prompt_tokens": s.prompt_tokens,
            "cached_tokens": s.cached_tokens, "busy_prefill_s": s.busy_prefill_s,
            "in_flight_area": s.in_flight_area, "elapsed": time.monotonic() - s.started})

    async def reset(self, request: web.Request) -> web.Response:
        self.cache.clear()
        self.stats = NodeStats()
        self._last = time.monotonic()
        self.start_time = time.time()
        return web.json_response({"ok": True})

    async def kill(self, request: web.Request) -> web.Response:
        """Crash: stop listening and drop every connection, answers under way included,
        after this reply."""
        asyncio.get_running_loop().call_later(0.01, lambda: asyncio.ensure_future(self.crash()))
        return web.json_response({"ok": True})

    async def kill_busy(self, request: web.Request) -> web.Response:
        """Crash the first node of this process found with at least `waiting` requests queued
        for their prefill (so none of them has had an answer event yet); its port, and how
        many it had waiting and running. Waits up to 30 s."""
        want = int(request.query.get("waiting", "1"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for n in self.siblings:
                if n.runner is not None and n.waiting >= want:
                    out = {"port": n.port, "waiting": n.waiting, "running": n.running}
                    await n.crash()
                    return web.json_response(out)
            await asyncio.sleep(0.002)
        return web.json_response({"port": 0}, status=504)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "sim", "object": "model"}]})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/sim/stats", self.stats_json)
        app.router.add_post("/sim/reset", self.reset)
        app.router.add_post("/sim/kill", self.kill)
        app.router.add_post("/sim/kill_busy", self.kill_busy)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def crash(self) -> None:
        """Stop listening and drop every connection at once, as a dead process would."""
        runner = self.runner
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            for h in runner.server.connections:
                if h.transport is not None:
                    h.transport.abort()
        await self.stop()

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


async def serve(ports: list[int], params: NodeParams) -> None:
    nodes = [SimNode(p, params) for p in ports]
    for n in nodes:
        n.siblings = nodes
        await n.start()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", required=True)
    ap.add_argument("--cache-tokens", type=int, default=NodeParams.cache_tokens)
    ap.add_argument("--prefill-ms-per-token", type=float, default=0.1)
    a = ap.parse_args()
    params = NodeParams(cache_tokens=a.cache_tokens, prefill_s_per_token=a.prefill_ms_per_token
                        / 1000)
    import uvloop

    uvloop.run(serve([int(p) for p in a.ports.split(",")], params))


if __name__ == "__main__":
    main()
