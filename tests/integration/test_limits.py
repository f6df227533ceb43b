"""Limits across replicas and workers through a real Redis, and across the workers of one
process without it; rate-limit headers, refusals, /v1/usage and per-key metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.redis import RedisServer, run_redis
from tests.support.router import RouterProc, run_router

WORDS5 = "one two three four five"  # 23 bytes: 6 tokens estimated; the fake counts 5 words
# ... and answers "echo: one two three four five": 6 completion words, so 11 tokens a request.
PER_REQUEST = 11
ESTIMATE = 6


def config(up: FakeUpstream, redis_url: str | None = None, policy: str | None = None) -> str:
    server = ""
    if redis_url:
        server += f'redis_url = "{redis_url}"\n'
    if policy:
        server += f'limits_on_redis_failure = "{policy}"\n'
    return f"""
[server]
{server}

[keys.rpm30]
key = "sk-rpm30"
rpm = 30

[keys.conc3]
key = "sk-conc3"
max_concurrent = 3

[keys.tpm]
key = "sk-tpm"
tpm = 30

[keys.budget]
key = "sk-budget"
budget_tokens = 30
budget_period = "day"

[keys.hdr]
key = "sk-hdr"
rpm = 5
tpm = 1000

[keys.viewer]
key = "sk-viewer"

[keys.team-x]
key = "sk-team-x"

[keys.reader]
key = "sk-reader"

[keys.refund]
key = "sk-refund"
tpm = 100

[keys.ops]
key = "sk-ops"
admin = true

[backends.fake]
type = "openai"
base_url = "{up.url}"
health_interval = 0

[models.echo]
backend = "fake"
backend_model = "fake-echo"
default = true

[models.slow]
backend = "fake"
backend_model = "fake-slow"

[models.broken]
backend = "fake"
backend_model = "fake-error-500"

[models.capped]
backend = "fake"
backend_model = "fake-echo"
rpm = 4
"""


async def post(
    url: str, key: str, *, model: str = "echo", content: str = WORDS5, stream: bool = False
) -> tuple[int, dict[str, str], str]:
    """One request on a fresh connection (so requests spread over the workers)."""
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s, s.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "stream": stream,
              "messages": [{"role": "user", "content": content}],
              **({"stream_options": {"include_usage": True}} if stream else {})},
    ) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.text()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def run_all(coros: list) -> list:
    async def main() -> list:
        return list(await asyncio.gather(*coros))

    return asyncio.run(main())


def error(text: str) -> dict:
    return json.loads(text)["error"]


def metric(router: RouterProc, name: str, **labels: str) -> float:
    with urllib.request.urlopen(router.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with run_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(
    upstream: FakeUpstream, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RouterProc, RouterProc]]:
    tmp = tmp_path_factory.mktemp("replicas")
    cfg = config(upstream, redis.url)
    with run_router(cfg, tmp, workers=2) as a, run_router(cfg, tmp, workers=2) as b:
        yield a, b


def test_rpm_is_exact_across_two_replicas_of_two_workers(
    replicas: tuple[RouterProc, RouterProc],
) -> None:
    urls = [r.url for r in replicas]

    async def main() -> list[tuple[int, dict[str, str], str]]:
        sem = asyncio.Semaphore(12)

        async def one(i: int) -> tuple[int, dict[str, str], str]:
            async with sem:
                return await post(urls[i % 2], "sk-rpm30")

        return await asyncio.gather(*(one(i) for i in range(60)))

    results = run(main())
    statuses = [s for s, _, _ in results]  # type: ignore[union-attr]
    assert statuses.count(200) == 30 and statuses.count(429) == 30
    for status, headers, text in results:  # type: ignore[union-attr]
        if status != 429:
            continue
        err = error(text)
        assert err["code"] == "rate_limit_exceeded"
        assert re.fullmatch(
            r"Rate limit reached for echo on requests per min \(RPM\) for key rpm30: "
            r"Limit 30, Used 30, Requested 1\. Please try again in [\d.]+m?s\.",
            err["message"],
        ), err["message"]
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-ratelimit-remaining-requests"] == "0"
    rejected = sum(metric(r, "airouter_key_rejected_total", key="rpm30", reason="requests")
                   for r in replicas)
    assert rejected == 30


def test_max_concurrent_holds_across_replicas(replicas: tuple[RouterProc, RouterProc]) -> None:
    urls = [r.url for r in replicas]
    # "echo: abcdefghijklm" streams as 5 pieces, 0.3 s apart: every admission happens while
    # the first three streams are still running.
    results = run_all([
        post(urls[i % 2], "sk-conc3", model="slow", content="abcdefghijklm", stream=True)
        for i in range(12)
    ])
    statuses = [s for s, _, _ in results]  # type: ignore[union-attr]
    assert statuses.count(200) == 3 and statuses.count(429) == 9
    for status, _, text in results:  # type: ignore[union-attr]
        if status == 200:
            assert '"echo: abcdefghijklm"' not in text  # streamed in pieces
            assert text.rstrip().endswith("data: [DONE]")
        else:
            assert "concurrent requests for key conc3: Limit 3, Used 3" in error(text)["message"]
    # The streams are over: their slots are free again, on either replica.
    again = run_all([post(u, "sk-conc3") for u in urls])
    assert [s for s, _, _ in again] == [200, 200]  # type: ignore[union-attr]


def _exhaust(urls: list[str], key: str) -> list[tuple[int, dict[str, str], str]]:
    """Three requests of 11 tokens (the third streamed) under a 30-token limit, then a fourth."""
    out = []
    for i, stream in enumerate((False, False, True, False)):
        out.append(run(post(urls[i % 2], key, stream=stream)))
    return out  # type: ignore[return-value]


def test_tpm_refuses_the_request_after_the_one_that_exhausted_it(
    replicas: tuple[RouterProc, RouterProc],
) -> None:
    results = _exhaust([r.url for r in replicas], "sk-tpm")
    assert [s for s, _, _ in results] == [200, 200, 200, 429]
    # The third ran the key past its limit (22 used + 6 estimated fits; 33 at its end) and
    # still finished; the fourth sees all 33.
    assert results[2][2].rstrip().endswith("data: [DONE]")
    assert "echo: one two three four five" in "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in results[2][2].splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    err = error(results[3][2])
    assert err["code"] == "rate_limit_exceeded"
    assert "tokens per min (TPM) for key tpm: Limit 30, Used 33, Requested 6." in err["message"]
    assert int(results[3][1]["retry-after"]) >= 1


def test_budget_refuses_with_insufficient_quota(replicas: tuple[RouterProc, RouterProc]) -> None:
    results = _exhaust([r.url for r in replicas], "sk-budget")
    assert [s for s, _, _ in results] == [200, 200, 200, 429]
    err = error(results[3][2])
    assert (err["type"], err["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "budget of 30 tokens per day; Used 33, Requested 6." in err["message"]
    req = urllib.request.Request(replicas[1].url + "/v1/usage",
                                 headers={"Authorization": "Bearer sk-budget"})
    with urllib.request.urlopen(req, timeout=5) as r:
        limits = json.loads(r.read())["keys"][0]["limits"]
    assert limits == {"budget": {"limit": 30, "used": 33, "remaining": 0, "period": "day"}}


def test_rate_limit_headers_count_down(replicas: tuple[RouterProc, RouterProc]) -> None:
    urls = [r.url for r in replicas]
    seen = []
    for i in range(5):
        status, h, text = run(post(urls[i % 2], "sk-hdr", stream=i == 1))  # type: ignore[misc]
        assert status == 200, text
        seen.append(h)
    assert [h["x-ratelimit-limit-requests"] for h in seen] == ["5"] * 5
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["4", "3", "2", "1", "0"]
    assert [h["x-ratelimit-limit-tokens"] for h in seen] == ["1000"] * 5
    # Each admission charges the prompt estimate; each finished request its true 11 tokens.
    assert [int(h["x-ratelimit-remaining-tokens"]) for h in seen] == [
        1000 - PER_REQUEST * i - ESTIMATE for i in range(5)
    ]
    for h in seen:
        for k in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            assert re.fullmatch(r"\d+(\.\d)?s|\d+ms", h[k]), h[k]
            assert 0 < float(h[k].rstrip("ms")) <= 60
    status, h, text = run(post(urls[1], "sk-hdr"))  # type: ignore[misc]
    assert status == 429 and error(text)["code"] == "rate_limit_exceeded"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert "retry-after" in h


def test_model_wide_limit_is_shared_by_every_key(replicas: tuple[RouterProc, RouterProc]) -> None:
    urls = [r.url for r in replicas]
    got = [run(post(urls[i % 2], ("sk-viewer", "sk-team-x")[i % 2], model="capped"))
           for i in range(6)]
    assert [s for s, _, _ in got] == [200, 200, 200, 200, 429, 429]  # type: ignore[misc]
    assert "for model capped (all keys): Limit 4, Used 4" in error(got[5][2])["message"]  # type: ignore[index]


def test_a_request_that_fails_before_any_output_costs_no_tokens(
    replicas: tuple[RouterProc, RouterProc],
) -> None:
    status, h, _ = run(post(replicas[0].url, "sk-refund", model="broken"))  # type: ignore[misc]
    assert status >= 500  # the upstream's 500, relayed as the router's 502
    assert h["x-ratelimit-remaining-tokens"] == str(100 - ESTIMATE)  # charged on admission

    def used() -> int:
        req = urllib.request.Request(replicas[1].url + "/v1/usage",
                                     headers={"Authorization": "Bearer sk-refund"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(json.loads(r.read())["keys"][0]["limits"]["tokens"]["used"])

    deadline = time.monotonic() + 5
    while used() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert used() == 0  # given back when the backend failed
    status, h, _ = run(post(replicas[1].url, "sk-refund"))  # type: ignore[misc]
    assert status == 200 and h["x-ratelimit-remaining-tokens"] == str(100 - ESTIMATE)


def test_usage_shows_a_key_its_own_use_and_an_admin_everything(
    replicas: tuple[RouterProc, RouterProc],
) -> None:
    urls = [r.url for r in replicas]
    for u in urls:
        assert run(post(u, "sk-reader"))[0] == 200  # type: ignore[index]

    def usage(key: str) -> dict:
        req = urllib.request.Request(urls[0] + "/v1/usage",
                                     headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    # Two requests of 5 prompt and 6 completion tokens; workers send usage once a second.
    want = {"requests": 2, "prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}
    deadline = time.monotonic() + 10
    while True:
        mine = usage("sk-reader")
        if mine["keys"][0].get("usage") == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert mine["key"] == "reader" and [k["key"] for k in mine["keys"]] == ["reader"]
    assert mine["keys"][0]["usage"] == want
    assert mine["keys"][0]["limits"] == {}
    assert mine["models"]["capped"]["requests"]["limit"] == 4
    everything = usage("sk-ops")
    assert {k["key"] for k in everything["keys"]} == {
        "rpm30", "conc3", "tpm", "budget", "hdr", "viewer", "team-x", "reader", "refund", "ops"
    }
    hdr = next(k for k in everything["keys"] if k["key"] == "hdr")["limits"]
    assert set(hdr) == {"requests", "tokens"}
    assert hdr["requests"]["limit"] == 5 and hdr["tokens"]["limit"] == 1000
    assert hdr["requests"]["remaining"] == 5 - hdr["requests"]["used"]
    conc = next(k for k in everything["keys"] if k["key"] == "conc3")["limits"]
    assert conc == {"concurrent": {"limit": 3, "in_flight": 0}}
    assert "sk-" not in json.dumps(everything)
    def tokens() -> float:  # workers add to the metrics once a second
        return sum(metric(r, "airouter_key_tokens_total", key="reader", model="echo",
                          kind="completion") for r in replicas)

    deadline = time.monotonic() + 5
    while tokens() != 12 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tokens() == 12
    assert sum(metric(r, "airouter_key_requests_total", key="reader", model="echo")
               for r in replicas) == 2


def test_redis_outage_follows_the_policy_and_recovers(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis.log")
    server.start()
    try:
        with contextlib.ExitStack() as stack:
            allow = stack.enter_context(run_router(
                config(upstream, server.url).replace("rpm = 5", "rpm = 3"), tmp_path))
            deny = stack.enter_context(run_router(
                config(upstream, server.url, "deny").replace("rpm = 5", "rpm = 3"), tmp_path))

            def statuses(router: RouterProc, n: int) -> list[int]:
                return [run(post(router.url, "sk-hdr"))[0] for _ in range(n)]  # type: ignore[index]

            assert statuses(allow, 4) == [200, 200, 200, 429]
            assert metric(allow, "airouter_limits_backend_up") == 1
            server.stop()
            assert statuses(allow, 5) == [200] * 5  # "allow": served, unlimited
            status, h, text = run(post(deny.url, "sk-hdr"))  # type: ignore[misc]
            assert status == 503 and error(text)["code"] == "limits_unavailable"
            assert h["retry-after"] == "1"
            assert metric(allow, "airouter_limits_backend_up") == 0
            server.start()  # the same port, empty
            time.sleep(1.2)
            assert statuses(allow, 4) == [200, 200, 200, 429]
            assert metric(allow, "airouter_limits_backend_up") == 1
            assert run(post(deny.url, "sk-hdr"))[0] == 429  # type: ignore[index]
            log = allow.log_text()
            assert log.count("unreachable") == 1 and "is back" in log
    finally:
        server.stop()


def test_without_redis_rpm_holds_across_the_workers_of_one_process(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    with run_router(config(upstream).replace("rpm = 30", "rpm = 10"), tmp_path,
                    workers=2) as router:
        statuses = [s for s, _, _ in run_all([post(router.url, "sk-rpm30") for _ in range(20)])]
        assert statuses.count(200) == 10 and statuses.count(429) == 10  # type: ignore[attr-defined]
