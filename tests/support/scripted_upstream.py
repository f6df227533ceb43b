"""OpenAI-compatible nodes whose chat answers a test scripts: each request goes to `script`
(node index, request body, aiohttp request) and is recorded with the node that got it. One
aiohttp loop in a background thread serves them all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from tests.support.procs import free_port

Json = dict[str, Any]
Script = Callable[[int, Json, web.Request], Awaitable[web.StreamResponse]]


def chunk(cid: str, created: int, model: str, delta: Json | None,
          finish: str | None = None, usage: Json | None = None) -> bytes:
    """One SSE event of a chat.completion.chunk, as vLLM writes it."""
    obj: Json = {"id": cid, "object": "chat.completion.chunk", "created": created,
                 "model": model,
                 "choices": [] if delta is None else [
                     {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def open_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


async def drop(request: web.Request) -> web.StreamResponse:
    """Die: what was written is given a moment to leave, then the connection is reset."""
    await asyncio.sleep(0.2)
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


class ScriptedNodes:
    def __init__(self, n: int, script: Script) -> None:
        self.ports = [free_port() for _ in range(n)]
        self.urls = [f"http://127.0.0.1:{p}/v1" for p in self.ports]
        self.script = script
        self.requests: list[tuple[int, Json]] = []  # (node index, body), as they came
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def seen(self) -> list[tuple[int, Json]]:
        with self._lock:
            return list(self.requests)

    def _app(self, i: int) -> web.Application:
        async def chat(request: web.Request) -> web.StreamResponse:
            body: Json = await request.json()
            with self._lock:
                self.requests.append((i, body))
            return await self.script(i, body, request)

        async def models(request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": []})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        return app

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        runners = []
        for i, port in enumerate(self.ports):
            runner = web.AppRunner(self._app(i), shutdown_timeout=0.1)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
            runners.append(runner)
        ready.set()
        loop.run_forever()
        for runner in runners:
            loop.run_until_complete(runner.cleanup())
        loop.close()


@contextlib.contextmanager
def scripted_nodes(n: int, script: Script) -> Iterator[ScriptedNodes]:
    nodes = ScriptedNodes(n, script)
    ready = threading.Event()
    t = threading.Thread(target=nodes._run, args=(ready,), daemon=True, name="scripted-nodes")
    t.start()
    assert ready.wait(10)
    try:
        yield nodes
    finally:
        assert nodes._loop is not None
        nodes._loop.call_soon_threadsafe(nodes._loop.stop)
        t.join(10)

