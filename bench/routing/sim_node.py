"""A simulated OpenAI-compatible LLM node, in time rather than compute: a prefix cache of
16-token blocks with LRU eviction, one prefill queue costing time per uncached token, decode
slots, vLLM's metric names at /metrics and `cached_tokens` in usage (its ground truth).

`python -m bench.routing.sim_node --ports 9001,9002` serves several nodes in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from bench.routing.sim_core import BLOCK_TOKENS, NodeParams, SimEngine


def render(body: dict[str, Any]) -> str:
    """The node's own prompt text: roles and contents, as a chat template would. With vLLM's
    `continue_final_message` (and `add_generation_prompt: false`) the final assistant message
    is left open: the answer continues its text."""
    if "messages" in body:
        parts = []
        for m in body["messages"]:
            c = m.get("content")
            if isinstance(c, list):
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
            parts.append(f"<|{m.get('role')}|>{c or ''}")
        if continues(body):
            return "".join(parts)
        return "".join(parts) + "<|assistant|>"
    return str(body.get("prompt", ""))


def continues(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    return bool(body.get("continue_final_message") and messages
                and messages[-1].get("role") == "assistant")


class SimNode:
    def __init__(self, port: int, params: NodeParams) -> None:
        self.port = port
        self.engine = SimEngine(params)
        self.runner: web.AppRunner | None = None
        self.start_time = time.time()
        self.siblings: list[SimNode] = [self]  # the nodes this process serves

    @property
    def waiting(self) -> int:
        return self.engine.waiting

    @property
    def running(self) -> int:
        return self.engine.running

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("continue_final_message") and (
                body.get("add_generation_prompt", True) or not continues(body)):
            # As vLLM answers: it continues only an open final assistant message.
            return web.json_response({"error": {
                "message": "continue_final_message needs add_generation_prompt false and a "
                           "final assistant message", "type": "BadRequestError",
                "code": 400}}, status=400)
        text = render(body)
        max_tokens = int(body.get("max_tokens") or 16)
        stream = bool(body.get("stream"))
        resp: web.StreamResponse | None = None
        if stream:
            # As vLLM does: the head at once, the first event after the prefill.
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
        engine = self.engine
        tokens, cached = await engine.prefill(text.encode())
        usage = {"prompt_tokens": tokens, "completion_tokens": max_tokens,
                 "total_tokens": tokens + max_tokens,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        async with engine.decoding():
            if resp is None:
                for _ in range(max_tokens - 1):
                    await asyncio.sleep(engine.step())
                return web.json_response({
                    "id": f"sim-{self.port}", "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "length", "message": {
                        "role": "assistant", "content": "tok " * max_tokens}}],
                    "usage": usage})
            for i in range(max_tokens):
                if i:
                    await asyncio.sleep(engine.step())
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

    async def metrics(self, request: web.Request) -> web.Response:
        e = self.engine
        text = (
            f'vllm:num_requests_waiting{{model_name="sim"}} {e.waiting}\n'
            f'vllm:num_requests_running{{model_name="sim"}} {e.running}\n'
            f'vllm:kv_cache_usage_perc{{model_name="sim"}} {len(e.cache) / e.capacity}\n'
            f'vllm:cache_config_info{{block_size="{BLOCK_TOKENS}",'
            f'num_gpu_blocks="{e.capacity}"}} 1.0\n'
            f"process_start_time_seconds {self.start_time}\n"
            f"sim_prompt_tokens_total {e.stats.prompt_tokens}\n"
            f"sim_cached_tokens_total {e.stats.cached_tokens}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def stats_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.engine.stats_dict())

    async def reset(self, request: web.Request) -> web.Response:
        self.engine.reset()
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
    ap.add_argument("--decode-slots", type=int, default=NodeParams.decode_slots)
    a = ap.parse_args()
    params = NodeParams(cache_tokens=a.cache_tokens, prefill_s_per_token=a.prefill_ms_per_token
                        / 1000, decode_slots=a.decode_slots)
    import uvloop

    uvloop.run(serve([int(p) for p in a.ports.split(",")], params))


if __name__ == "__main__":
    main()
