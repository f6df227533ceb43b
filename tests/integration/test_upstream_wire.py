"""What a misbehaving upstream's wire does to the real router: a POST is never run twice, an
answer that is not HTTP/1.x is 502 at once, a gzip bomb is 502 without the router's memory
growing. The upstream is a scripted socket server in the test's loop."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from pathlib import Path

import aiohttp

from tests.conftest import CLIENT_KEY
from tests.integration.test_http_client import Scripted, ok
from tests.support.router import RouterProc, run_router

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = json.dumps({
    "id": "c1", "object": "chat.completion", "created": 1, "model": "up",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()


def config(url: str) -> str:
    return f"""
[server]
api_keys = ["{CLIENT_KEY}"]

[backends.up]
type = "openai"
base_url = "{url}"
connect_timeout = 2
first_token_timeout = 30
health_interval = 0

[models.m]
backend = "up"
backend_model = "up"
"""


async def post(router: RouterProc) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.post(router.base_url + "/chat/completions", json=CHAT) as r:
            return r.status, await r.read()


def peak_rss_kb(pid: int) -> int:
    """The highest resident size of the process and its children (the workers), in KiB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmHWM:"))
        pids += [int(c) for c in children]
    return total


async def test_a_post_the_upstream_read_and_dropped_is_502_and_sent_once(tmp_path: Path) -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        if n == 1:
            w.close()  # the whole POST read on a kept-alive connection, then closed unanswered
        else:
            w.write(ok(ANSWER, b"Content-Type: application/json\r\n"))

    async with Scripted(script) as srv:
        with run_router(config(srv.url), tmp_path) as router:
            status, _ = await post(router)
            assert status == 200
            status, raw = await post(router)
            assert status == 502, raw
            assert len(srv.requests) == 2 and srv.connections == 1


async def test_an_h2c_only_upstream_is_502_at_once(tmp_path: Path) -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        # An HTTP/2 SETTINGS frame, then the wait for a client preface that never comes.
        w.write(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64")

    async with Scripted(script) as srv:
        with run_router(config(srv.url), tmp_path) as router:
            start = time.monotonic()
            status, raw = await post(router)
            assert status == 502, raw
            assert time.monotonic() - start < 5  # not the first-token timeout (30 s)


async def test_a_gzip_bomb_is_502_and_the_router_does_not_grow(tmp_path: Path) -> None:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    zero = bytes(1024 * 1024)
    bomb = b"".join([z.compress(zero) for _ in range(200)] + [z.flush()])  # 200 MiB of zeros
    assert len(bomb) < 250_000

    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        body = gzip.compress(ANSWER) if n < 2 else bomb
        w.write(ok(body, b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"))

    async with Scripted(script) as srv:
        with run_router(config(srv.url), tmp_path) as router:
            for _ in range(2):  # a gzip answer to an identity request is decoded
                status, raw = await post(router)
                assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"]
            before = peak_rss_kb(router.proc.pid)
            status, raw = await post(router)
            assert status == 502, raw
            assert peak_rss_kb(router.proc.pid) - before < 8 * 1024
