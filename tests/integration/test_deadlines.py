"""The upstream deadlines of an openai backend, against a scripted socket server: what
first_token_timeout, idle_timeout and request_timeout each bound, in both modes, on every
endpoint. Real router, real sockets."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.conftest import CLIENT_KEY
from tests.support.openapi import validate
from tests.support.router import RouterProc, run_router

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
MSGS = [{"role": "user", "content": "hello"}]
LATE = 2.5  # seconds before the "late" upstream answers


def _chat(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "late"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


def _event(model: str, delta: dict, finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
             "model": model, "choices": [{"index": 0, "delta": delta,
                                          "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# One request per connection: the server reads no second one.
JSON_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
             b"Content-Length: %d\r\n\r\n")
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


class Scripted:
    """An upstream that acts by the requested model: `silent` never answers; `late` answers
    whole after LATE seconds; `stall` sends its head and part of the body, then nothing;
    `trickle` sends its head, then its body a byte every 0.4 s (never idle for a second, 4 s
    in all)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            req = json.loads(await r.readexactly(length)) if length else {}
            model, stream = req.get("model", ""), req.get("stream") is True
            if model == "silent":
                await asyncio.sleep(3600)
            elif model == "late":
                await asyncio.sleep(LATE)
                if stream:
                    body = (_event(model, {"role": "assistant", "content": "late"})
                            + _event(model, {}, "stop") + b"data: [DONE]\n\n")
                    w.write(SSE_HEAD + _chunked(body) + b"0\r\n\r\n")
                else:
                    body = _chat(model)
                    w.write(JSON_HEAD % len(body) + body)
                await w.drain()
            elif model == "stall":
                if stream:
                    w.write(SSE_HEAD + _chunked(_event(model, {"role": "assistant",
                                                               "content": "part"})))
                else:
                    body = _chat(model)
                    w.write(JSON_HEAD % len(body) + body[:10])
                await w.drain()
                await asyncio.sleep(3600)
            elif model == "trickle":
                body = _chat(model)
                w.write(JSON_HEAD % len(body))
                for i in range(10):
                    await asyncio.sleep(0.4)
                    w.write(body[i:i + 1])
                    await w.drain()
                await asyncio.sleep(3600)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    up = Scripted()
    common = f'base_url = "http://127.0.0.1:{up.port}/v1"\nhealth_interval = 0\n' \
             "eject_after = 100\nretries = 0\n"
    cfg = f"""
[server]
api_keys = ["{CLIENT_KEY}"]
[backends.first]
type = "openai"
{common}first_token_timeout = 1
idle_timeout = 60
[backends.idle]
type = "openai"
{common}first_token_timeout = 6
idle_timeout = 1
[backends.whole]
type = "openai"
{common}first_token_timeout = 6
idle_timeout = 1
request_timeout = 2
[models.silent]
backend = "first"
[models.late]
backend = "idle"
[models.stall]
backend = "idle"
[models.trickle]
backend = "whole"
"""
    try:
        with run_router(cfg, tmp_path_factory.mktemp("deadlines")) as r:
            yield r
    finally:
        up.close()


async def post(router: RouterProc, path: str, payload: dict
               ) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.post(
            router.url + path, json=payload, headers=AUTH) as r:
        return r.status, await r.read(), time.monotonic() - t0


ENDPOINTS = [
    ("/v1/chat/completions", {"messages": MSGS}),
    ("/v1/completions", {"prompt": "hello"}),
    ("/v1/embeddings", {"input": "hello"}),
    ("/v1/responses", {"input": "hello"}),
    ("/v1/messages", {"messages": MSGS, "max_tokens": 16}),
]


async def test_first_token_timeout_bounds_a_whole_answer_on_every_endpoint(
        router: RouterProc) -> None:
    got = await asyncio.gather(*(post(router, path, {"model": "silent", **extra})
                                 for path, extra in ENDPOINTS))
    for (path, _), (status, raw, took) in zip(ENDPOINTS, got, strict=True):
        assert status == 504, (path, raw)
        assert 0.9 < took < 3.5, (path, took)
        body = json.loads(raw)
        if path == "/v1/messages":
            assert body["type"] == "error", body
            message = body["error"]["message"]
        else:
            validate("ErrorResponse", body)
            assert body["error"]["code"] == "gateway_timeout", body
            message = body["error"]["message"]
        assert "first_token_timeout" in message, (path, message)


async def test_idle_timeout_does_not_cut_the_wait_for_the_answers_start(
        router: RouterProc) -> None:
    whole, streamed = await asyncio.gather(
        post(router, "/v1/chat/completions", {"model": "late", "messages": MSGS}),
        post(router, "/v1/chat/completions", {"model": "late", "messages": MSGS,
                                              "stream": True}))
    assert whole[0] == 200, whole
    assert json.loads(whole[1])["choices"][0]["message"]["content"] == "late"
    assert streamed[0] == 200, streamed
    assert b'"late"' in streamed[1] and streamed[1].rstrip().endswith(b"data: [DONE]")
    assert whole[2] > LATE - 0.2 and streamed[2] > LATE - 0.2


async def test_idle_timeout_bounds_a_body_that_stalls(router: RouterProc) -> None:
    whole, streamed = await asyncio.gather(
        post(router, "/v1/chat/completions", {"model": "stall", "messages": MSGS}),
        post(router, "/v1/chat/completions", {"model": "stall", "messages": MSGS,
                                              "stream": True}))
    status, raw, took = whole
    assert status == 504 and "idle_timeout" in json.loads(raw)["error"]["message"], whole
    assert took < 3.5, took
    status, raw, took = streamed
    # The stream had begun: an error event ends it.
    assert status == 200 and b'"part"' in raw, streamed
    assert b'"code":"gateway_timeout"' in raw and b"idle_timeout" in raw, streamed
    assert took < 3.5, streamed


async def test_request_timeout_bounds_a_whole_answer_that_trickles(
        router: RouterProc) -> None:
    status, raw, took = await post(router, "/v1/chat/completions",
                                   {"model": "trickle", "messages": MSGS})
    assert status == 504, raw
    assert "request_timeout" in json.loads(raw)["error"]["message"], raw
    assert 1.9 < took < 3.5, took
