"""An OpenAI-compatible upstream that answers a chat request only when the test lets it:
what reached it, in arrival order, is the order in which the router granted its node's slots.
Each request is named by its last message's text. Its /metrics page has vLLM's names, with
the engine's waiting queue and KV cache usage the test sets (`waiting`, `kv`; `waiting` None:
the page answers 500, unreadable)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from tests.support.procs import free_port


class GatedUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._cond = threading.Condition()
        self._seen: list[str] = []
        self._held: list[asyncio.Event] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.auto = False  # True: answer at once
        self.waiting: int | None = 0
        self.kv = 0.0

    @property
    def seen(self) -> list[str]:
        with self._cond:
            return list(self._seen)

    def wait_seen(self, n: int, timeout: float = 20.0) -> list[str]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._seen) >= n, timeout):
                raise TimeoutError(f"{self._seen} after {timeout}s, not {n} requests")
            return list(self._seen)

    def release(self, n: int = 1) -> None:
        """Answer the n oldest requests held."""
        assert self._loop is not None

        def go() -> None:
            for _ in range(n):
                if self._held:
                    self._held.pop(0).set()

        self._loop.call_soon_threadsafe(go)

    def release_all(self) -> None:
        assert self._loop is not None
        self.auto = True
        self._loop.call_soon_threadsafe(lambda: [e.set() for e in self._held])

    async def _chat(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        name = str(body["messages"][-1]["content"])
        gate = asyncio.Event()
        if not self.auto:
            self._held.append(gate)
        with self._cond:
            self._seen.append(name)
            self._cond.notify_all()
        if not self.auto:
            await gate.wait()
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "m"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"done {name}"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        })

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.waiting is None:
            return web.Response(status=500, text="engine busy")
        return web.Response(text=(
            f'vllm:num_requests_waiting{{model_name="m"}} {self.waiting}\n'
            f'vllm:num_requests_running{{model_name="m"}} {len(self._held)}\n'
            f'vllm:kv_cache_usage_perc{{model_name="m"}} {self.kv}\n'))

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()


@contextlib.contextmanager
def gated_upstream() -> Iterator[GatedUpstream]:
    up = GatedUpstream()
    ready = threading.Event()
    t = threading.Thread(target=up._run, args=(ready,), daemon=True, name="gated-upstream")
    t.start()
    ready.wait(10)
    try:
        yield up
    finally:
        up.release_all()
        assert up._loop is not None
        up._loop.call_soon_threadsafe(up._loop.stop)
        t.join(10)
