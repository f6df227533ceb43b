"""The real router with balance = "prefix_load" in front of simulated vLLM-like nodes
(bench/routing/sim_node.py): affinity, agreement across workers, failover, a node killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.procs import free_port, spawn, wait_http
from tests.support.router import RouterProc, run_router

KEY = "sk-test"


@contextlib.contextmanager
def sim_nodes(n: int, tmp: Path) -> Iterator[list[int]]:
    ports = [free_port() for _ in range(n)]
    cmd = [sys.executable, "-m", "bench.routing.sim_node", "--ports", ",".join(map(str, ports)),
           "--prefill-ms-per-token", "0.01"]
    with spawn(cmd, log=tmp / "sim.log") as proc:
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/v1/models", timeout=30, proc=proc)
        yield ports


def _config(ports: list[int], extra: str = "", metrics: float = 0.2) -> str:
    urls = ", ".join(f'"http://127.0.0.1:{p}/v1"' for p in ports)
    return f"""
[server]
api_keys = ["{KEY}"]

[backends.sim]
type = "openai"
urls = [{urls}]
balance = "prefix_load"
metrics_interval = {metrics}
health_interval = 0.5
{extra}

[models.m]
backend = "sim"
backend_model = "sim"
"""


def _prompt(group: int, tail: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"Group {group} shared instructions. " * 150},
            {"role": "user", "content": f"question {tail}"}]


async def _ask(s: aiohttp.ClientSession, r: RouterProc, messages: list[dict[str, str]],
               stream: bool = False, extra: dict[str, str] | None = None) -> tuple[int, str]:
    body = {"model": "m", "messages": messages, "max_tokens": 4, "stream": stream,
            **(extra or {})}
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with s.post(r.base_url + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as resp:
        text = await resp.text()
        if resp.status != 200:
            return resp.status, text
        if stream:
            if "data: [DONE]" not in text:
                return 599, text
            first = text.split("\n", 1)[0].removeprefix("data: ")
            return 200, json.loads(first)["id"]
        return 200, json.loads(text)["id"]


async def _kill(s: aiohttp.ClientSession, port: int) -> None:
    async with s.post(f"http://127.0.0.1:{port}/sim/kill") as resp:
        assert resp.status == 200


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def test_a_shared_prefix_lands_on_one_node_and_feedback_is_counted(tmp_path: Path) -> None:
    with sim_nodes(4, tmp_path) as ports, run_router(_config(ports), tmp_path) as r:
        async with aiohttp.ClientSession() as s:
            for g in range(3):
                got = [await _ask(s, r, _prompt(g, t), stream=t % 2 == 1) for t in range(5)]
                assert {st for st, _ in got} == {200}, got
                assert len({i for _, i in got}) == 1, got
        metrics = _get(r.url + "/metrics")
        assert "airouter_prefix_cache_confirmed_total" in metrics
        assert "airouter_engine_running_requests" in metrics
        health = json.loads(_get(r.url + "/health"))
        assert "prefix_blocks" in json.dumps(health)
        assert "Traceback" not in r.log_text()


async def test_two_workers_agree_on_a_cold_prefix_home(tmp_path: Path) -> None:
    # Without engine metrics: a scrape that caught the other worker's request under way would
    # make its node look busier here for one interval, and a cold prefix go elsewhere.
    with sim_nodes(4, tmp_path) as ports, run_router(_config(ports, metrics=0), tmp_path,
                                                     workers=2) as r:
        async with aiohttp.ClientSession() as s:
            homes = []
            for g in range(12):
                # New connections: granian hands them to either worker.
                async with aiohttp.ClientSession() as one:
                    a = (await _ask(one, r, _prompt(100 + g, 0)))[1]
                b = (await _ask(s, r, _prompt(100 + g, 1)))[1]
                assert a == b and a.startswith("sim-")
                homes.append(a)
            assert len(set(homes)) >= 3


async def test_two_workers_under_load_send_a_prefix_to_one_node(tmp_path: Path) -> None:
    # Each worker counts only its own requests in flight, so under load their cold choices
    # differ: the worker that did not place a prefix learns where it went from the other.
    extra = "prefix = { abs_threshold = 1000 }"
    with sim_nodes(4, tmp_path) as ports, run_router(_config(ports, extra), tmp_path,
                                                     workers=2) as r:
        async def fresh(g: int, t: int) -> tuple[int, str]:
            async with aiohttp.ClientSession() as one:  # a new connection: either worker
                return await _ask(one, r, _prompt(400 + g, t))

        firsts = [await fresh(g, 0) for g in range(8)]
        await asyncio.sleep(0.2)
        rest = await asyncio.gather(*(fresh(g, t) for t in range(1, 5) for g in range(8)))
        assert {st for st, _ in firsts + rest} == {200}, firsts + rest
        for i, (_, r0) in enumerate(rest):
            assert r0 == firsts[i % 8][1], (i % 8, firsts, rest)
        assert len({node for _, node in firsts}) >= 2


async def test_failover_skips_dead_nodes(tmp_path: Path) -> None:
    extra = "retries = 3\neject_after = 1\ncooldown = 30"
    with sim_nodes(4, tmp_path) as ports, run_router(_config(ports, extra), tmp_path) as r:
        async with aiohttp.ClientSession() as s:
            for p in ports[:2]:
                await _kill(s, p)
            await asyncio.sleep(0.1)
            results = [await _ask(s, r, _prompt(200 + g, 0), stream=g % 2 == 1)
                       for g in range(10)]
            assert all(st == 200 for st, _ in results), results
            assert {i for _, i in results} <= {f"sim-{p}" for p in ports[2:]}


async def test_a_node_killed_before_its_answers_began_fails_them_over(tmp_path: Path) -> None:
    # A slow prefill (0.3 ms a token, one request at a time) and one session: the requests
    # queue on one node. It dies once 3 wait there, streamed ones with their head already
    # sent (as vLLM does) and no event yet. Every one is answered in full by another node.
    # The fourth node serves no client: it is where the kill is asked for.
    ports = [free_port() for _ in range(4)]
    cmd = [sys.executable, "-m", "bench.routing.sim_node", "--ports", ",".join(map(str, ports)),
           "--prefill-ms-per-token", "0.3"]
    extra = "retries = 3\neject_after = 1\ncooldown = 30"
    with spawn(cmd, log=tmp_path / "sim.log") as proc:
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/v1/models", timeout=30, proc=proc)
        with run_router(_config(ports[:3], extra), tmp_path) as r:
            async with aiohttp.ClientSession() as s:
                async def kill() -> dict[str, int]:
                    url = f"http://127.0.0.1:{ports[3]}/sim/kill_busy?waiting=3"
                    async with s.post(url) as resp:
                        return dict(await resp.json())

                killer = asyncio.ensure_future(kill())
                await asyncio.sleep(0.05)
                got = await asyncio.gather(*(
                    _ask(s, r, [{"role": "user", "content": f"request {i} " * 400}],
                         stream=i % 2 == 0, extra={"prompt_cache_key": "one-session"})
                    for i in range(4)))
                killed = await killer
    assert killed["port"] in ports[:3] and killed["running"] == 0, killed
    assert [st for st, _ in got] == [200] * 4, got
    assert f"sim-{killed['port']}" not in {i for _, i in got}, (killed, got)


@pytest.mark.parametrize("size", [10, 1_000_000])
async def test_tiny_and_huge_prompts_and_image_parts(tmp_path: Path, size: int) -> None:
    with sim_nodes(2, tmp_path) as ports, run_router(_config(ports), tmp_path) as r:
        async with aiohttp.ClientSession() as s:
            st, _ = await _ask(s, r, [{"role": "user", "content": "x" * size}])
            assert st == 200
            parts = [{"type": "text", "text": "look"},
                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
            st, _ = await _ask(s, r, [{"role": "user", "content": parts}])  # type: ignore[list-item]
            assert st == 200
        assert "prefix" not in r.log_text().lower()
