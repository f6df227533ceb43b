"""Nodes that die, hang, fill up or come back; shutdown and reload under load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.openapi import validate
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router
from tests.support.triton import run_triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
MSGS = [{"role": "user", "content": "hello"}]
FULL = "Hello, world! Café 😀 The end."


async def stream_chat(session: aiohttp.ClientSession, url: str, model: str,
                      content: str = "hello", to_end: bool = False, **extra: object) -> dict:
    """One streaming request: status, whether data arrived, the text, and any error event.
    `to_end`: read the body to its end after [DONE], so that the connection goes back to the
    pool (left before its last chunk, aiohttp closes it)."""
    out: dict = {"status": 0, "started": False, "text": "", "error": None, "done": False}
    async with session.post(url + "/v1/chat/completions", headers=AUTH, json={
            "model": model, "stream": True, "messages": [{"role": "user", "content": content}],
            **extra}) as r:
        out["status"] = r.status
        if r.status != 200:
            out["body"] = await r.json()
            return out
        async for line in r.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                out["done"] = True
                if to_end:
                    await r.read()
                break
            obj = json.loads(data)
            if "error" in obj:
                out["error"] = obj["error"]
                continue
            out["started"] = True
            for c in obj["choices"]:
                out["text"] += c["delta"].get("content") or ""
    return out


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def node_states(router: RouterProc, backend: str) -> dict[str, str]:
    _, body = get_json(router.url + "/health")
    return {n["url"]: n["status"] for n in body["backends"][backend]["nodes"]}


def wait_until(pred, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.triton
def test_node_killed_mid_run_fails_nothing_unstarted_and_comes_back(
        tmp_path: Path) -> None:
    models = ["trtllm_ensemble"]
    ports_b = (free_port(), free_port())
    with run_triton(REPO, log=tmp_path / "a.log", models=models) as a:
        b_ctx = run_triton(REPO, log=tmp_path / "b.log", models=models,
                           grpc_port=ports_b[0], http_port=ports_b[1])
        b = b_ctx.__enter__()
        b_alive = True
        try:
            cfg = f"""
[server]
api_keys = ["{CLIENT_KEY}"]
[backends.pair]
type = "triton"
urls = ["{a.grpc_url}", "{b.grpc_url}"]
health_interval = 0.5
eject_after = 1
cooldown = 2
connect_timeout = 2
[models.ens]
backend = "pair"
backend_model = "trtllm_ensemble"
prompt_format = "chatml"
"""
            with run_router(cfg, tmp_path) as router:
                async def run() -> list[dict]:
                    nonlocal b_alive
                    results: list[dict] = []
                    async with aiohttp.ClientSession() as s:
                        sem = asyncio.Semaphore(8)

                        async def one(i: int) -> None:
                            async with sem:
                                results.append(await stream_chat(s, router.url, "ens"))

                        tasks = [asyncio.create_task(one(i)) for i in range(200)]
                        while len(results) < 60:
                            await asyncio.sleep(0.01)
                        os.killpg(b.proc.pid, signal.SIGKILL)  # node B dies mid-run
                        b_ctx.__exit__(None, None, None)
                        b_alive = False
                        await asyncio.gather(*tasks)
                    return results

                results = asyncio.run(run())
                assert len(results) == 200
                failed = [r for r in results if r["status"] != 200 or not r["done"]
                          or r["error"] is not None or r["text"] != FULL]
                # Only streams already under way on B may break, and they end cleanly.
                for r in failed:
                    assert r["status"] == 200 and r["started"] and r["done"], r
                assert len(failed) <= 8
                wait_until(lambda: node_states(router, "pair")[b.grpc_url] != "up",
                           what="B ejected")
                assert node_states(router, "pair")[a.grpc_url] == "up"
                _, ready = get_json(router.url + "/health/ready")
                assert ready["status"] == "ok"
                # B comes back on the same port and is taken back.
                b_ctx = run_triton(REPO, log=tmp_path / "b2.log", models=models,
                                   grpc_port=ports_b[0], http_port=ports_b[1])
                b = b_ctx.__enter__()
                b_alive = True
                wait_until(lambda: node_states(router, "pair")[b.grpc_url] == "up",
                           what="B healthy again")

                async def after() -> list[dict]:
                    async with aiohttp.ClientSession() as s:
                        return await asyncio.gather(*(stream_chat(s, router.url, "ens")
                                                      for _ in range(16)))

                from tests.integration.test_observability import scrape, total

                before = total(scrape(router), "airouter_requests_total", node=b.grpc_url)
                assert all(r["text"] == FULL for r in asyncio.run(after()))
                time.sleep(0.3)
                assert total(scrape(router), "airouter_requests_total",
                             node=b.grpc_url) > before
        finally:
            if b_alive:
                b_ctx.__exit__(None, None, None)


class _SilentServer:
    """Accepts connections and never answers: a node that is up but stuck."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[_SilentServer]:
    s = _SilentServer()
    yield s
    s.close()


def test_stuck_nodes_time_out_with_504(silent: _SilentServer, tmp_path: Path) -> None:
    cfg = f"""
[server]
api_keys = ["{CLIENT_KEY}"]
[backends.stuck-http]
type = "openai"
base_url = "http://127.0.0.1:{silent.port}/v1"
first_token_timeout = 1
idle_timeout = 1
health_interval = 0
[backends.stuck-grpc]
type = "triton"
url = "127.0.0.1:{silent.port}"
first_token_timeout = 1
connect_timeout = 1
health_interval = 0
[models.http]
backend = "stuck-http"
[models.grpc]
backend = "stuck-grpc"
prompt_format = "chatml"
"""
    with run_router(cfg, tmp_path) as router:
        for model in ("http", "grpc"):
            for stream in (False, True):
                t0 = time.monotonic()
                req = urllib.request.Request(
                    router.base_url + "/chat/completions", headers={**AUTH, "Content-Type":
                                                                   "application/json"},
                    data=json.dumps({"model": model, "messages": MSGS,
                                     "stream": stream}).encode())
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(req, timeout=15)
                took = time.monotonic() - t0
                body = json.loads(e.value.read())
                validate("ErrorResponse", body)
                assert e.value.code in (504, 502), (model, body)
                assert took < 6, (model, took)
        # The HTTP node answers nothing at all: that is the first-token timeout, a 504.
        req = urllib.request.Request(
            router.base_url + "/chat/completions",
            headers={**AUTH, "Content-Type": "application/json"},
            data=json.dumps({"model": "http", "messages": MSGS}).encode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=15)
        assert e.value.code == 504


def fake_cfg(up: FakeUpstream, extra: str = "", server: str = "") -> str:
    return f"""
[server]
api_keys = ["{CLIENT_KEY}"]
{server}
[backends.fake]
type = "openai"
base_url = "{up.url}"
api_key = "{UPSTREAM_KEY}"
{extra}
[models.slow]
backend = "fake"
backend_model = "fake-slow"
[models.echo]
backend = "fake"
backend_model = "fake-echo"
[models.forever]
backend = "fake"
backend_model = "fake-disconnect"
"""


def test_sigterm_lets_50_streams_finish_and_refuses_new_connections(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    with run_router(fake_cfg(upstream), tmp_path) as router:
        async def run() -> tuple[list[dict], str]:
            async with aiohttp.ClientSession() as s:
                tasks = [asyncio.create_task(stream_chat(s, router.url, "slow",
                                                         content="one two three four five"))
                         for _ in range(50)]
                # All 50 are under way (the fake has seen them) before the signal.
                deadline = time.monotonic() + 10
                while (sum(1 for e in upstream.events if e[0] == "received" and e[1] ==
                           "fake-slow") < 50 and time.monotonic() < deadline):
                    await asyncio.sleep(0.02)
                os.kill(router.proc.pid, signal.SIGTERM)
                await asyncio.sleep(0.3)
                try:
                    async with s.get(router.url + "/health/live",
                                     timeout=aiohttp.ClientTimeout(total=2)) as r:
                        new = f"answered {r.status}"
                except aiohttp.ClientError:
                    new = "refused"
                return await asyncio.gather(*tasks), new

        upstream.clear()
        results, new = asyncio.run(run())
        assert new == "refused"
        want = "echo: one two three four five"
        assert [r["text"] for r in results] == [want] * 50
        assert all(r["done"] and r["error"] is None for r in results)
        assert router.proc.wait(20) == 0


def test_grace_period_ends_endless_streams_cleanly(upstream: FakeUpstream,
                                                   tmp_path: Path) -> None:
    with run_router(fake_cfg(upstream, server="shutdown_grace = 1"), tmp_path) as router:
        async def run() -> dict:
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(stream_chat(s, router.url, "forever"))
                await asyncio.sleep(0.5)
                os.kill(router.proc.pid, signal.SIGTERM)
                return await task

        t0 = time.monotonic()
        r = asyncio.run(run())
        assert r["started"] and r["done"]
        assert r["error"]["code"] == "shutting_down"
        assert time.monotonic() - t0 < 5
        assert router.proc.wait(20) == 0


def test_sighup_reload_keeps_streams_and_rejects_bad_files(upstream: FakeUpstream,
                                                          tmp_path: Path) -> None:
    with run_router(fake_cfg(upstream), tmp_path) as router:
        async def run() -> dict:
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(stream_chat(s, router.url, "slow",
                                                       content="a b c d e f g h"))
                await asyncio.sleep(0.3)
                text = router.config.read_text().replace("[models.echo]", "[models.echo2]")
                router.config.write_text(text)
                os.kill(router.proc.pid, signal.SIGHUP)
                return await task

        r = asyncio.run(run())
        assert r["done"] and r["error"] is None and r["text"] == "echo: a b c d e f g h"

        def status(model: str) -> int:
            req = urllib.request.Request(
                router.base_url + "/chat/completions",
                headers={**AUTH, "Content-Type": "application/json"},
                data=json.dumps({"model": model, "messages": MSGS}).encode())
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as e:
                return e.code

        wait_until(lambda: status("echo2") == 200, what="new config in service")
        # The old worker stops accepting RELOAD_CLOSE_S after its SIGTERM.
        wait_until(lambda: status("echo") == 404, what="old workers out of service")
        # An invalid file is rejected and the running config keeps serving.
        router.config.write_text(router.config.read_text() + "\n[models.broken]\nbackend = 7\n")
        os.kill(router.proc.pid, signal.SIGHUP)
        wait_until(lambda: "reload rejected" in router.log_text(), what="rejection logged")
        time.sleep(2.5)  # past the worker respawn
        assert status("echo2") == 200
        assert router.proc.poll() is None


def test_over_limit_requests_get_429_or_503_with_retry_after(upstream: FakeUpstream,
                                                             tmp_path: Path) -> None:
    extra = "max_concurrent = 2\nmax_queue = 2\nqueue_timeout = 1"
    with run_router(fake_cfg(upstream, extra=extra), tmp_path) as router:
        async def burst(n: int) -> list[tuple[int, str | None]]:
            async with aiohttp.ClientSession() as s:
                async def one() -> tuple[int, str | None]:
                    async with s.post(router.url + "/v1/chat/completions", headers=AUTH,
                                      json={"model": "slow", "messages": MSGS}) as r:
                        body = await r.json()
                        if r.status != 200:
                            validate("ErrorResponse", body)
                        return r.status, r.headers.get("Retry-After")
                return await asyncio.gather(*(one() for _ in range(n)))

        results = asyncio.run(burst(10))
        codes = sorted(c for c, _ in results)
        assert codes.count(200) >= 2
        assert 429 in codes
        assert all(ra for c, ra in results if c in (429, 503))
        assert set(codes) <= {200, 429, 503}

        def rss() -> int:
            kids = [int(p) for p in os.listdir("/proc") if p.isdigit()
                    and _ppid(int(p)) == router.proc.pid]
            return sum(_rss(p) for p in kids)

        before = rss()
        for _ in range(5):
            asyncio.run(burst(100))
        assert rss() - before < 30 * 1024 * 1024


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_balancing_fallbacks_and_readiness(upstream: FakeUpstream, tmp_path: Path) -> None:
    dead = free_port()
    cfg = f"""
[server]
api_keys = ["{CLIENT_KEY}"]
[backends.rr]
type = "openai"
balance = "round_robin"
urls = ["{upstream.url}", {{ url = "http://localhost:{upstream.port}/v1", weight = 3 }}]
[backends.dead]
type = "openai"
urls = ["http://127.0.0.1:{dead}/v1", "http://127.0.0.1:{free_port()}/v1"]
health_interval = 0.3
connect_timeout = 1
[models.echo]
backend = "rr"
backend_model = "fake-echo"
[models.gone]
backend = "dead"
fallbacks = ["echo"]
[models.gone-alone]
backend = "dead"
"""
    with run_router(cfg, tmp_path) as router:
        upstream.clear()
        for _ in range(8):
            req = urllib.request.Request(
                router.base_url + "/chat/completions",
                headers={**AUTH, "Content-Type": "application/json"},
                data=json.dumps({"model": "echo", "messages": MSGS}).encode())
            urllib.request.urlopen(req, timeout=10).read()
        hosts = [r["headers"]["host"].split(":")[0] for r in upstream.requests]
        assert hosts.count("localhost") == 6 and hosts.count("127.0.0.1") == 2
        # All nodes of `gone` are down: its fallback answers.
        req = urllib.request.Request(
            router.base_url + "/chat/completions",
            headers={**AUTH, "Content-Type": "application/json"},
            data=json.dumps({"model": "gone", "messages": MSGS}).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        assert body["model"] == "echo" and body["choices"][0]["message"]["content"]
        wait_until(lambda: set(node_states(router, "dead").values()) == {"down"},
                   what="dead nodes marked down")
        req = urllib.request.Request(
            router.base_url + "/chat/completions",
            headers={**AUTH, "Content-Type": "application/json"},
            data=json.dumps({"model": "gone-alone", "messages": MSGS}).encode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 503 and e.value.headers["Retry-After"]
        assert get_json(router.url + "/health/ready")[0] == 200  # `echo` is routable


def test_ready_is_503_when_nothing_is_routable(tmp_path: Path) -> None:
    cfg = f"""
[backends.dead]
type = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"
health_interval = 0.2
unhealthy_after = 1
[models.m]
backend = "dead"
"""
    with run_router(cfg, tmp_path) as router:
        wait_until(lambda: get_json(router.url + "/health/ready")[0] == 503,
                   what="not ready")
        status, body = get_json(router.url + "/health")
        assert status == 503 and body["backends"]["dead"]["nodes"][0]["status"] == "down"
        assert get_json(router.url + "/health/live")[0] == 200
