"""Backend faults on the OpenAI-compatible path: who gets blamed, what the client sees, what
operators see. Real router, real sockets, the scripted fake upstream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY, fake_config
from tests.integration.test_observability import scrape, total
from tests.support.fake_upstream import BAD_EVENT, STALL_POINTS, FakeUpstream
from tests.support.openapi import validate
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
EXTRA = """
[models.traceback]
backend = "fake"
backend_model = "fake-traceback"

[models.bad-event]
backend = "fake"
backend_model = "fake-bad-event"

[models.truncated]
backend = "fake"
backend_model = "fake-truncated"

[models.truncated-always]
backend = "fake-always"
backend_model = "fake-truncated"

[models.stall]
backend = "fake"
backend_model = "fake-stall"

[models.error-text]
backend = "fake"
backend_model = "fake-error-text"

[backends.dead-never]
type = "openai"
base_url = "http://127.0.0.1:{dead}/v1"
stream = "never"
connect_timeout = 1
health_interval = 0

[models.gone]
backend = "dead-never"
fallbacks = ["echo"]
"""


@pytest.fixture(scope="module")
def router(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProc]:
    cfg = fake_config(upstream.url, dead_port=free_port(),
                      extra=EXTRA.replace("{dead}", str(free_port())))
    with run_router(cfg, tmp_path_factory.mktemp("faults"),
                    env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY}) as r:
        yield r


def body(model: str, content: str = "one two three", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def post(router: RouterProc, payload: dict, rid: str | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    headers = {**AUTH, **({"x-request-id": rid} if rid else {})}
    async with aiohttp.ClientSession() as s, s.post(
            router.base_url + "/chat/completions", json=payload, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def events(raw: bytes) -> list[bytes]:
    """The data payloads of an SSE body, in order; every event must be one `data: ` line."""
    out = []
    for e in raw.split(b"\n\n"):
        if not e:
            continue
        assert e.startswith(b"data: ") and b"\n" not in e, e
        out.append(e[6:])
    return out


def access_lines(router: RouterProc, rid: str) -> list[dict]:
    tag = f" airouter.access [{rid}] "
    return [json.loads(line.split(tag, 1)[1])
            for line in router.log_text().splitlines() if tag in line]


def wait_for(pred, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- upstream 5xx bodies stay with operators --------------------------------------------


@pytest.mark.parametrize("model", ["traceback", "error-text"])
async def test_upstream_5xx_text_is_logged_not_relayed(router: RouterProc, model: str) -> None:
    leaked = ("Traceback", "/srv/engine", "illegal memory", "plain-text failure")
    for stream in (False, True):
        status, _, raw = await post(router, body(model, stream=stream))
        assert status == 502, raw
        err = json.loads(raw)
        validate("ErrorResponse", err)
        assert err["error"]["type"] == "upstream_error"
        assert "HTTP 500" in err["error"]["message"]
        assert not any(word in raw.decode() for word in leaked), raw
    # Operators get the upstream's words, bounded and on one line.
    logged = [line for line in router.log_text().splitlines()
              if "answered HTTP 500" in line]
    want = "Traceback (most recent call last)" if model == "traceback" else "plain-text failure"
    assert any(want in line for line in logged), logged
    assert all(len(line) < 1000 for line in logged)


async def test_upstream_4xx_message_is_still_relayed(router: RouterProc) -> None:
    status, _, raw = await post(router, body("fake-error-400"))
    assert status == 400 and json.loads(raw)["error"]["message"] == "fake upstream error 400"


# --- streams that are not what they claim -------------------------------------------------


@pytest.mark.parametrize("framing", ["plain", "crlf", "utf8"])
async def test_non_json_event_ends_the_stream_with_an_error_event(
        router: RouterProc, framing: str) -> None:
    rid = f"bad-event-{framing}"
    # "crlf" frames the upstream's events with CRLF: the decoder path, not the pass-through;
    # "utf8" sends an event that is JSON in form but not UTF-8.
    status, _, raw = await post(router, body("bad-event", framing, stream=True), rid)
    assert status == 200
    assert BAD_EVENT.encode() not in raw and b"not json" not in raw and b"\xc3\x28" not in raw
    payloads = events(raw)
    assert payloads[-1] == b"[DONE]"
    err = json.loads(payloads[-2])
    validate("ErrorResponse", err)
    assert err["error"]["code"] == "bad_upstream_event"
    chunks = [json.loads(p) for p in payloads[:-2]]
    # What came before the bad event was relayed, in order; nothing after it.
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo"
    assert all(c["model"] == "bad-event" for c in chunks)
    # The same upstream, not streamed: a 502, as before.
    status, _, raw = await post(router, body("bad-event"))
    assert status == 502
    validate("ErrorResponse", json.loads(raw))


async def test_stream_cut_short_is_not_made_to_look_complete(router: RouterProc) -> None:
    status, _, raw = await post(router, body("truncated", stream=True,
                                             stream_options={"include_usage": True}))
    assert status == 200
    payloads = events(raw)
    assert payloads[-1] == b"[DONE]"
    err = json.loads(payloads[-2])
    validate("ErrorResponse", err)
    assert err["error"]["code"] == "stream_truncated"
    chunks = [json.loads(p) for p in payloads[:-2]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "echo: one two three"
    assert not any(c["choices"][0].get("finish_reason") for c in chunks)
    # A whole answer gathered from such a stream is a 502, not a reply without an end.
    status, _, raw = await post(router, body("truncated-always"))
    assert status == 502 and json.loads(raw)["error"]["code"] == "stream_truncated"


# --- failures after the start are visible to operators -------------------------------------


async def test_broken_stream_is_recorded_as_broken(router: RouterProc) -> None:
    before = scrape(router)
    # fake-die cuts the connection after two content chunks.
    status, _, raw = await post(router, body("die", stream=True), "broken-1")
    assert status == 200 and events(raw)[-1] == b"[DONE]"
    assert json.loads(events(raw)[-2])["error"]["code"] == "bad_gateway"
    status, _, _ = await post(router, body("echo", stream=True), "whole-1")
    assert status == 200
    time.sleep(0.3)
    after = scrape(router)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("airouter_requests_total", model="die", status="200", outcome="broken") == 1
    assert delta("airouter_requests_total", model="die", outcome="ok") == 0
    assert delta("airouter_requests_total", model="echo", status="200", outcome="ok") == 1
    assert delta("airouter_upstream_errors_total", backend="fake", kind="bad_gateway") == 1
    [line] = access_lines(router, "broken-1")
    assert (line["status"], line["outcome"], line["error"]) == (200, "broken", "bad_gateway")
    [line] = access_lines(router, "whole-1")
    assert line["status"] == 200 and line["outcome"] == "ok" and "error" not in line


async def test_failures_after_the_start_count_toward_ejection(upstream: FakeUpstream,
                                                            own_router) -> None:  # type: ignore[no-untyped-def]
    router = own_router(own_cfg(upstream.url, "health_interval = 0\neject_after = 2",
                                '[models.die]\nbackend = "b"\nbackend_model = "fake-die"'))
    for i in range(2):
        assert node_status(router) == "up", i
        status, _, raw = await post(router, body("die", stream=True))
        assert status == 200 and b'"code":"bad_gateway"' in raw
    assert node_status(router) == "ejected"
    # A whole answer ends the run of failures.
    status, _, _ = await post(router, body("echo"))
    assert status == 200 and node_status(router) == "up"


# --- a fallback starts from the client's request -----------------------------------------


async def test_fallback_gets_the_clients_request_not_the_first_backends_edits(
        router: RouterProc, upstream: FakeUpstream) -> None:
    upstream.clear()
    status, _, raw = await post(router, body("gone", stream=True,
                                             stream_options={"include_usage": True}))
    assert status == 200
    chunks = [json.loads(p) for p in events(raw)[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["model"] == "echo" for c in chunks)
    sent = upstream.requests[-1]["json"]
    assert sent["model"] == "fake-echo" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


# --- clean-up when the client leaves at any point ----------------------------------------


@pytest.mark.parametrize("point", STALL_POINTS)
async def test_client_leaving_at_each_point_closes_the_upstream(
        router: RouterProc, upstream: FakeUpstream, point: str) -> None:
    upstream.clear()
    rid = f"leave-{point}"
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(router.base_url + "/chat/completions",
                                          json=body("stall", point, stream=True),
                                          headers={**AUTH, "x-request-id": rid}))
        await asyncio.to_thread(upstream.wait_event, "stalled", 5.0)
        if point == "headers":
            task.cancel()  # no response yet: the client gives up waiting
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            resp = await task
            assert resp.status == 200
            if point != "open":  # at "open" the router has sent the headers, no event yet
                assert (await resp.content.readany()).startswith(b"data: {")
            resp.close()
        t_close = time.monotonic()
    t_seen = await asyncio.to_thread(upstream.wait_event, "closed", 5.0)
    assert t_seen - t_close < 1.0
    wait_for(lambda: bool(access_lines(router, rid)))
    [line] = access_lines(router, rid)
    assert line["status"] == 499 and line["error"] == "client_disconnected"
    # Still serving, on the same backend.
    status, _, raw = await post(router, body("echo"))
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"]


async def test_client_leaving_right_after_done_is_a_complete_answer(
        router: RouterProc, upstream: FakeUpstream) -> None:
    for i in range(20):
        rid = f"done-then-leave-{i}"
        async with aiohttp.ClientSession() as s:
            resp = await s.post(router.base_url + "/chat/completions",
                                json=body("echo", "a b c", stream=True),
                                headers={**AUTH, "x-request-id": rid})
            data = b""
            while not data.endswith(b"data: [DONE]\n\n"):
                data += await resp.content.readany()
            resp.close()
        wait_for(lambda rid=rid: bool(access_lines(router, rid)))
        [line] = access_lines(router, rid)
        assert line["status"] == 200 and line["outcome"] == "ok", line


@pytest.fixture
def own_router(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A router on a config of the test's own."""
    routers: list = []

    def start(cfg: str) -> RouterProc:
        ctx = run_router(cfg, tmp_path)
        routers.append(ctx)
        return ctx.__enter__()

    yield start
    for ctx in reversed(routers):
        ctx.__exit__(None, None, None)


def own_cfg(url: str, backend: str, models: str = "") -> str:
    return f"""
[server]
api_keys = ["{CLIENT_KEY}"]
[backends.b]
type = "openai"
base_url = "{url}"
{backend}
[models.echo]
backend = "b"
backend_model = "fake-echo"
[models.slow]
backend = "b"
backend_model = "fake-slow"
[models.stall]
backend = "b"
backend_model = "fake-stall"
[models."fake-error-*"]
backend = "b"
{models}
"""


def node_status(router: RouterProc) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(router.url + "/health", timeout=5) as r:
            health = json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503: nothing routable
        health = json.loads(e.read())
    return str(health["backends"]["b"]["nodes"][0]["status"])


def ready(router: RouterProc) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(router.url + "/health/ready", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


# --- a backend always has something to try ------------------------------------------------


async def test_client_mistakes_do_not_lock_everyone_out(upstream: FakeUpstream,
                                                         own_router) -> None:  # type: ignore[no-untyped-def]
    router = own_router(own_cfg(upstream.url, "health_interval = 0\neject_after = 3"))
    # llama.cpp answers some invalid requests with 500: three in a row eject the only node.
    for _ in range(3):
        status, _, _ = await post(router, body("fake-error-500"))
        assert status == 502
    assert node_status(router) == "ejected"
    assert ready(router) == 200  # routable: an ejected node is still tried
    # Every other client is still served: below the panic threshold, ejected nodes are tried.
    for _ in range(3):
        status, _, raw = await post(router, body("echo"))
        assert status == 200, raw
    assert node_status(router) == "up"  # and it answered, so it is back


async def test_panic_threshold_zero_keeps_the_old_refusal(upstream: FakeUpstream,
                                                          own_router) -> None:  # type: ignore[no-untyped-def]
    router = own_router(own_cfg(upstream.url, "health_interval = 0\neject_after = 1\n"
                                              "cooldown = 30\npanic_threshold = 0"))
    assert (await post(router, body("fake-error-500")))[0] == 502
    assert ready(router) == 503
    status, headers, raw = await post(router, body("echo"))
    assert status == 503 and json.loads(raw)["error"]["code"] == "no_healthy_node"
    assert headers["Retry-After"]


async def test_busy_node_with_a_slow_health_endpoint_stays_up(own_router) -> None:  # type: ignore[no-untyped-def]
    # As llama.cpp's server: GET /v1/models waits while a generation runs.
    with FakeUpstream(models_wait_idle=True) as up:
        router = own_router(own_cfg(up.url, "health_interval = 0.2\nhealth_timeout = 0.3\n"
                                            "unhealthy_after = 1"))
        stop = time.monotonic() + 3.0
        seen: set[str] = set()

        async def load() -> None:
            async with aiohttp.ClientSession() as s:
                while time.monotonic() < stop:
                    # Overlapping answers of about 0.5 s each: the node is never idle.
                    async def one() -> None:
                        async with s.post(router.base_url + "/chat/completions", headers=AUTH,
                                          json=body("slow", "a b c", stream=True)) as r:
                            assert r.status == 200
                            assert (await r.read()).endswith(b"data: [DONE]\n\n")
                    await asyncio.gather(one(), asyncio.sleep(0.25))

        async def watch() -> None:
            while time.monotonic() < stop:
                seen.add(await asyncio.to_thread(node_status, router))
                await asyncio.sleep(0.1)

        await asyncio.gather(load(), load(), watch())
        assert seen == {"up"}
        # A node that answers nothing while its checks time out is marked down.
        async with aiohttp.ClientSession() as s:
            task = asyncio.create_task(s.post(router.base_url + "/chat/completions",
                                              json=body("stall", "headers", stream=True),
                                              headers=AUTH))
            await asyncio.to_thread(up.wait_event, "stalled", 5.0)
            await asyncio.to_thread(wait_for, lambda: node_status(router) == "down", 5.0)
            task.cancel()


# --- the connection pool is a capacity limit, not a timeout --------------------------------


async def concurrent_streams(router: RouterProc, n: int) -> list[tuple[int, str | None, float]]:
    async with aiohttp.ClientSession() as s:
        async def one() -> tuple[int, str | None, float]:
            t0 = time.monotonic()
            async with s.post(router.base_url + "/chat/completions", headers=AUTH,
                              json=body("slow", "a b c d e f g h", stream=True)) as r:
                raw = await r.read()
                took = time.monotonic() - t0
                if r.status == 200:
                    assert raw.endswith(b"data: [DONE]\n\n") and b'"error"' not in raw
                else:
                    validate("ErrorResponse", json.loads(raw))
                return r.status, r.headers.get("Retry-After"), took
        return await asyncio.gather(*(one() for _ in range(n)))


async def test_full_connection_pool_answers_429_at_once(upstream: FakeUpstream,
                                                        own_router) -> None:  # type: ignore[no-untyped-def]
    router = own_router(own_cfg(upstream.url, "health_interval = 0\nmax_connections = 2\n"
                                              "connect_timeout = 1"))
    results = await concurrent_streams(router, 4)
    assert sorted(s for s, _, _ in results) == [200, 200, 429, 429]
    for status, retry_after, took in results:
        if status == 429:
            assert retry_after and took < 0.5  # not a wait for the connect timeout
    # The node was not blamed for it.
    assert node_status(router) == "up"


async def test_pool_is_never_smaller_than_max_concurrent(upstream: FakeUpstream,
                                                         own_router) -> None:  # type: ignore[no-untyped-def]
    router = own_router(own_cfg(upstream.url, "health_interval = 0\nmax_connections = 2\n"
                                              "max_concurrent = 4\nconnect_timeout = 1"))
    results = await concurrent_streams(router, 4)
    assert [s for s, _, _ in results] == [200] * 4
