"""One suite, every way of serving the router: RSGI (airouter's default), ASGI under granian
(`airouter --interface asgi`), and `airouter.asgi:app` under uvicorn and hypercorn. Real
processes, real sockets, the official client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY, fake_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.openapi import validate
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router

INTERFACES = ["rsgi", "asgi", "uvicorn", "hypercorn"]
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
MSGS = [{"role": "user", "content": "one two three"}]
SERVER = "body_timeout = 1\nshutdown_grace = 10\n"


def _config(upstream: FakeUpstream) -> str:
    return fake_config(upstream.url, dead_port=free_port()).replace(
        "[server]\n", "[server]\n" + SERVER, 1)


@pytest.fixture(scope="module", params=INTERFACES)
def served(request: pytest.FixtureRequest, upstream: FakeUpstream,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    tmp = tmp_path_factory.mktemp(request.param)
    with run_router(_config(upstream), tmp, env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY},
                    interface=request.param) as r:
        yield r


def _request(url: str, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or AUTH)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_whole_answer(served: RouterProc) -> None:
    client = openai.OpenAI(base_url=served.base_url, api_key=CLIENT_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=MSGS, extra_headers={"x-request-id": "iface-1"})
    assert raw.headers["x-request-id"] == "iface-1"
    r = raw.parse()
    validate("CreateChatCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.model == "echo"
    assert r.choices[0].message.content == "echo: one two three"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens > 0


async def test_streamed_answer(served: RouterProc) -> None:
    body = {"model": "echo", "messages": MSGS, "stream": True,
            "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as s, s.post(
            served.base_url + "/chat/completions", json=body, headers=AUTH) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"]
        raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishing = [i for i, c in enumerate(chunks) if c["choices"]
                 and c["choices"][0]["finish_reason"]]
    assert finishing == [len(chunks) - 2]  # the last choice chunk, then the usage chunk
    assert chunks[finishing[0]]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == "echo: one two three"


async def test_disconnect_cancels_the_backend_request(served: RouterProc,
                                                       upstream: FakeUpstream) -> None:
    upstream.clear()
    async with aiohttp.ClientSession() as s:
        r = await s.post(served.base_url + "/chat/completions", headers=AUTH,
                         json={"model": "disconnect", "messages": MSGS, "stream": True})
        got = 0
        async for line in r.content:
            if line.startswith(b"data: {"):
                got += 1
                if got == 3:
                    break
        t_close = time.monotonic()
        r.close()
    t_seen = await asyncio.to_thread(upstream.wait_event, "closed", 5.0)
    assert t_seen - t_close < 1.5


def test_body_over_the_limit_is_413(served: RouterProc) -> None:
    big = json.dumps({"model": "echo", "messages": [{"role": "user",
                                                      "content": "x" * 1_100_000}]}).encode()
    status, headers, body = _request(served.base_url + "/chat/completions", "POST", big,
                                     {**AUTH, "Content-Type": "application/json"})
    assert status == 413
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert headers["x-request-id"]


def test_stalled_body_is_408(served: RouterProc) -> None:
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(head.encode() + b'{"model":')
        t0 = time.monotonic()
        got = b""
        while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
            part = s.recv(65536)
            if not part:
                break
            got += part
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert 0.8 < time.monotonic() - t0 < 5
    assert b'"code":"request_timeout"' in got or b"request_timeout" in got


def test_unknown_paths_and_methods_in_the_api_shape(served: RouterProc) -> None:
    status, headers, body = _request(served.url + "/v1/nope")
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url"
    assert headers["x-request-id"]
    status, headers, body = _request(served.url + "/v1/models", "POST", b"{}")
    assert status == 405 and "GET" in headers["allow"]
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
    status, _, body = _request(served.url + "/v1/messages/nope")
    assert status == 404 and json.loads(body)["type"] == "error"  # Anthropic's shape there
    status, headers, body = _request(served.base_url + "/models/echo")
    assert status == 200 and json.loads(body)["id"] == "echo" and headers["x-request-id"]


def test_metrics_count_what_was_served(served: RouterProc) -> None:
    client = openai.OpenAI(base_url=served.base_url, api_key=CLIENT_KEY, max_retries=0)
    client.chat.completions.create(model="echo", messages=MSGS)
    status, headers, body = _request(served.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    lines = [ln for ln in body.decode().splitlines()
             if ln.startswith("airouter_requests_total{") and 'model="echo"' in ln
             and 'status="200"' in ln]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) >= 1


@pytest.mark.parametrize("interface", INTERFACES)
def test_sigterm_lets_streams_finish(interface: str, upstream: FakeUpstream,
                                     tmp_path: Path) -> None:
    with run_router(_config(upstream), tmp_path, env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY},
                    interface=interface) as router:
        async def stream(s: aiohttp.ClientSession) -> str:
            async with s.post(router.base_url + "/chat/completions", headers=AUTH, json={
                    "model": "slow", "stream": True, "messages": MSGS}) as r:
                assert r.status == 200
                raw = (await r.read()).decode()
            assert raw.endswith("data: [DONE]\n\n")
            return "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                           for e in raw.split("\n\n") if e.startswith("data: {"))

        async def run() -> list[str]:
            async with aiohttp.ClientSession() as s:
                tasks = [asyncio.create_task(stream(s)) for _ in range(5)]
                deadline = time.monotonic() + 10
                while (sum(1 for e in upstream.events if e[0] == "received"
                           and e[1] == "fake-slow") < 5 and time.monotonic() < deadline):
                    await asyncio.sleep(0.02)
                os.kill(router.proc.pid, signal.SIGTERM)
                return await asyncio.gather(*tasks)

        upstream.clear()
        assert asyncio.run(run()) == ["echo: one two three"] * 5
        # uvicorn ends by raising the signal it caught again, once its own shutdown is done.
        assert router.proc.wait(20) == (-signal.SIGTERM if interface == "uvicorn" else 0)


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/health", None, 200),
    ("GET", "/health/live", None, 200),
    ("GET", "/health/ready", None, 200),
    ("GET", "/metrics", None, 200),
    ("GET", "/v1/usage", None, 200),
    ("GET", "/v1/models", None, 200),
    ("GET", "/v1/models/echo", None, 200),
    ("GET", "/v1/models/nope", None, 404),
    ("POST", "/tokenize", b'{"model": "echo", "prompt": "hi"}', 400),
    ("POST", "/detokenize", b'{"model": "echo", "tokens": [1]}', 400),
    ("POST", "/v1/messages/count_tokens", b'{"model": "echo", "messages": []}', 400),
    ("POST", "/v1/embeddings", b"{", 400),
])
def test_every_answer_echoes_the_request_id(served: RouterProc, method: str, path: str,
                                            body: bytes | None, status: int) -> None:
    headers = {**AUTH, "x-request-id": "echo-me-1", "Content-Type": "application/json"}
    got, h, _ = _request(served.url + path, method, body, headers)
    assert (got, h.get("x-request-id")) == (status, "echo-me-1")
    got, h, _ = _request(served.url + "/v1/usage", "GET", None, {"x-request-id": "echo-me-2"})
    assert (got, h.get("x-request-id")) == (401, "echo-me-2")
