"""SIGHUP: an invalid file changes nothing; a valid one replaces the workers, dropping nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_observability import scrape, total
from tests.integration.test_resilience import AUTH, MSGS, _ppid, fake_cfg, stream_chat, wait_until
from tests.support.fake_upstream import FakeUpstream
from tests.support.router import RouterProc, run_router

RELOADS = "airouter_config_reloads_total"
# fake-slow answers "echo: <content>" in 4-character pieces 0.3 s apart: about 3.5 s here.
LONG = "one two three four five six seven eight nine"


def workers(router: RouterProc) -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) ==
            router.proc.pid}


def reloads(router: RouterProc, result: str) -> float:
    return total(scrape(router), RELOADS, result=result)


def test_invalid_file_on_sighup_changes_nothing(upstream: FakeUpstream, tmp_path: Path) -> None:
    with run_router(fake_cfg(upstream, server="shutdown_grace = 1"), tmp_path,
                    workers=2) as router:
        before = workers(router)
        assert reloads(router, "rejected") == 0

        async def run() -> dict:
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(stream_chat(s, router.url, "slow", content=LONG))
                await asyncio.sleep(0.3)
                router.config.write_text(router.config.read_text() +
                                         "\n[models.broken]\nbackend = 7\n")
                os.kill(router.proc.pid, signal.SIGHUP)
                return await task

        t0 = time.monotonic()
        r = asyncio.run(run())
        assert time.monotonic() - t0 > 2  # outlived shutdown_grace
        assert r["done"] and r["error"] is None and r["text"] == "echo: " + LONG
        assert "reload rejected" in router.log_text()
        assert workers(router) == before
        assert reloads(router, "rejected") == 1
        assert reloads(router, "ok") == 0


def test_stream_outlives_shutdown_grace_across_a_valid_reload(upstream: FakeUpstream,
                                                              tmp_path: Path) -> None:
    with run_router(fake_cfg(upstream, server="shutdown_grace = 1"), tmp_path) as router:
        async def run() -> dict:
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(stream_chat(s, router.url, "slow", content=LONG))
                await asyncio.sleep(0.3)
                router.config.write_text(router.config.read_text() + "\n[models.echo2]\n"
                                         'backend = "fake"\nbackend_model = "fake-echo"\n')
                os.kill(router.proc.pid, signal.SIGHUP)
                return await task

        r = asyncio.run(run())
        assert r["done"] and r["error"] is None and r["text"] == "echo: " + LONG
        assert reloads(router, "ok") == 1


@pytest.fixture
def migrate_req() -> Iterator[None]:
    """net.ipv4.tcp_migrate_req = 1, as the README asks of a host that reloads: a connection
    queued on a replaced worker's SO_REUSEPORT socket moves to a new worker's instead of being
    reset (without it, about one request in 100,000 of this load is dropped, at the instant an
    old worker closes its socket). Restored afterwards."""
    knob = Path("/proc/sys/net/ipv4/tcp_migrate_req")
    try:
        before = knob.read_text().strip()
        knob.write_text("1")
    except OSError:
        pytest.skip("needs net.ipv4.tcp_migrate_req = 1 (root, Linux 5.14+)")
    try:
        yield
    finally:
        knob.write_text(before)


@pytest.mark.usefixtures("migrate_req")
def test_valid_reloads_under_keep_alive_load_fail_nothing(upstream: FakeUpstream,
                                                         tmp_path: Path) -> None:
    with run_router(fake_cfg(upstream), tmp_path, workers=2) as router:
        base = router.config.read_text()
        failures: list[str] = []
        done = [0]

        async def one(s: aiohttp.ClientSession, model: str, stream: bool) -> None:
            try:
                if stream:
                    r = await stream_chat(s, router.url, model, content="a b c", to_end=True)
                    ok = r["status"] == 200 and r["done"] and r["error"] is None
                    what = repr(r)
                else:
                    async with s.post(router.url + "/v1/chat/completions", headers=AUTH,
                                      json={"model": model, "messages": MSGS}) as resp:
                        body = await resp.read()
                        ok = resp.status == 200
                        what = f"{resp.status} {body[:200]!r}"
                if not ok:
                    failures.append(what)
                done[0] += 1
            except (TimeoutError, aiohttp.ClientError) as e:
                failures.append(repr(e))

        async def client(s: aiohttp.ClientSession, i: int, until: float) -> None:
            n = 0
            while time.monotonic() < until:
                await one(s, "echo", stream=(n + i) % 2 == 0)
                n += 1

        async def run() -> int:
            # One connection per client, each always in use (as a load generator holds them): a
            # connection left idle in the pool through the old worker's Connection: close
            # window is closed under a client that may pick it up at that moment, the race
            # every HTTP/1.1 server has when it closes an idle keep-alive connection. Streams
            # are read to their end, or aiohttp would open a new connection for the next
            # request; a new connection still queued on the old worker's socket when it closes
            # is reset while net.ipv4.tcp_migrate_req is 0 (the router names it at start-up).
            connector = aiohttp.TCPConnector(limit=6)
            async with aiohttp.ClientSession(connector=connector) as s:
                until = time.monotonic() + 9
                clients = [asyncio.create_task(client(s, i, until)) for i in range(6)]
                for gen in (1, 2, 3):
                    await asyncio.sleep(1.5)
                    router.config.write_text(base + f"\n[models.echo{gen}]\nbackend = \"fake\"\n"
                                             'backend_model = "fake-echo"\n')
                    os.kill(router.proc.pid, signal.SIGHUP)
                await asyncio.gather(*clients)
                async with s.post(router.url + "/v1/chat/completions", headers=AUTH,
                                  json={"model": "echo3", "messages": MSGS}) as resp:
                    return resp.status

        status = asyncio.run(run())
        assert failures == [], f"{len(failures)} of {done[0] + len(failures)}: {failures[:5]}"
        assert done[0] > 100
        assert status == 200
        wait_until(lambda: reloads(router, "ok") == 3, what="3 reloads counted")


def test_sigterm_during_a_reload_drain_cuts_it_to_shutdown_grace(upstream: FakeUpstream,
                                                                 tmp_path: Path) -> None:
    with run_router(fake_cfg(upstream, server="shutdown_grace = 1"), tmp_path) as router:
        async def run() -> dict:
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(stream_chat(s, router.url, "forever"))
                await asyncio.sleep(0.3)
                os.kill(router.proc.pid, signal.SIGHUP)  # the same file: valid
                await asyncio.sleep(3)  # the old worker is draining on reload_grace (300 s)
                assert not task.done()
                os.kill(router.proc.pid, signal.SIGTERM)
                return await task

        t0 = time.monotonic()
        r = asyncio.run(run())
        assert r["started"] and r["done"]
        assert r["error"]["code"] == "shutting_down"
        assert time.monotonic() - t0 < 8
        assert router.proc.wait(20) == 0
