"""A stream cut mid-answer by a dying node, finished on another (`resume =
"continue_final_message"`): for the client it is one stream. Real router, two scripted nodes:
whichever gets the request first streams three content chunks and resets the connection; the
continuation (the text so far as the final assistant message) is finished by the other."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from tests.conftest import CLIENT_KEY
from tests.integration.test_observability import scrape, total
from tests.support.router import RouterProc, run_router
from tests.support.scripted_upstream import ScriptedNodes, chunk, drop, open_sse, scripted_nodes

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Greet."}]
FIRST_PART = ["Hel", "lo ", "wor"]
SECOND_PART = ["ld", "!"]
PROMPT = 10  # the first request's prompt tokens


async def script(node: int, body: dict[str, Any], request: web.Request) -> web.StreamResponse:
    model = body["model"] + "-0613"
    resp = await open_sse(request)
    if not body.get("continue_final_message"):
        # The node that dies: a role delta, three content deltas, then a reset connection.
        await resp.write(chunk("chatcmpl-first", 1111, model, {"role": "assistant",
                                                                "content": ""}))
        for text in FIRST_PART:
            await resp.write(chunk("chatcmpl-first", 1111, model, {"content": text}))
        how = body["messages"][-1]["content"]
        if how == "truncate":  # a clean end, without finish_reason or [DONE]
            return resp
        if how == "stall":  # idle_timeout's to notice
            await asyncio.sleep(30)
        return await drop(request)
    cid, created = "chatcmpl-second", 2222
    await resp.write(chunk(cid, created, model, {"role": "assistant", "content": ""}))
    for text in SECOND_PART[:-1]:
        await resp.write(chunk(cid, created, model, {"content": text}))
    await resp.write(chunk(cid, created, model, {"content": SECOND_PART[-1]}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        # vLLM counts the assistant's text so far in the continuation's prompt.
        prompt = PROMPT + len(FIRST_PART)
        await resp.write(chunk(cid, created, model, None, usage={
            "prompt_tokens": prompt, "completion_tokens": len(SECOND_PART),
            "total_tokens": prompt + len(SECOND_PART)}))
    await resp.write(b"data: [DONE]\n\n")
    return resp


def config(urls: list[str]) -> str:
    nodes = ", ".join(f'"{u}"' for u in urls)
    common = f"urls = [{nodes}]\nhealth_interval = 0\nidle_timeout = 1\n"
    return f"""
[server]
api_keys = ["{CLIENT_KEY}"]
[backends.on]
type = "openai"
resume = "continue_final_message"
{common}
[backends.off]
type = "openai"
{common}
[models.m]
backend = "on"
backend_model = "up"
[models.m-off]
backend = "off"
backend_model = "up"
"""


@pytest.fixture(scope="module")
def nodes() -> Iterator[ScriptedNodes]:
    with scripted_nodes(2, script) as n:
        yield n


@pytest.fixture(scope="module")
def router(nodes: ScriptedNodes, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProc]:
    with run_router(config(nodes.urls), tmp_path_factory.mktemp("resume")) as r:
        yield r


def raw_stream(router: RouterProc, **body: Any) -> list[bytes]:
    """The SSE data payloads of one streamed chat request, as sent."""
    with httpx.Client(timeout=20) as c, c.stream(
            "POST", router.base_url + "/chat/completions", headers=AUTH,
            json={"messages": MESSAGES, "stream": True, **body}) as r:
        assert r.status_code == 200
        data = b"".join(r.iter_bytes())
    events = [e for e in data.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events), data
    return [e[6:] for e in events]


def wait_requests(nodes: ScriptedNodes, n: int) -> list[tuple[int, dict[str, Any]]]:
    deadline = time.monotonic() + 5
    while len(nodes.seen()) < n:
        assert time.monotonic() < deadline, nodes.seen()
        time.sleep(0.02)
    return nodes.seen()


def test_a_broken_stream_is_finished_on_another_node(router: RouterProc,
                                                      nodes: ScriptedNodes) -> None:
    before = scrape(router)
    start = len(nodes.seen())
    client = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=50, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = list(stream)
    # One stream: the client's id, created and model throughout.
    assert {(c.id, c.created, c.model) for c in chunks} == {("chatcmpl-first", 1111, "m")}
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "".join(FIRST_PART + SECOND_PART)
    assert [d.role for d in deltas if d.role] == ["assistant"]
    assert [c.choices[0].finish_reason for c in chunks
            if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        PROMPT, len(FIRST_PART) + len(SECOND_PART), PROMPT + len(FIRST_PART + SECOND_PART))

    # The other node got the same request, continuing the text relayed so far.
    (first_node, first), (second_node, second) = wait_requests(nodes, start + 2)[start:]
    assert second_node != first_node
    assert first == {"model": "up", "messages": MESSAGES, "max_tokens": 50, "stream": True,
                     "stream_options": {"include_usage": True}}
    assert second == {
        **first, "max_tokens": 50 - len(FIRST_PART),
        "messages": [*MESSAGES, {"role": "assistant", "content": "".join(FIRST_PART)}],
        "continue_final_message": True, "add_generation_prompt": False}

    time.sleep(0.3)
    after = scrape(router)
    assert total(after, "airouter_stream_resumes_total", backend="on", outcome="resumed") - \
        total(before, "airouter_stream_resumes_total", backend="on", outcome="resumed") == 1
    assert total(after, "airouter_requests_total", model="m", outcome="ok") - \
        total(before, "airouter_requests_total", model="m", outcome="ok") == 1
    assert "continues it" in router.log_text()


@pytest.mark.parametrize("how", ["truncate", "stall"])
def test_a_stream_cut_short_or_stalled_is_finished_too(router: RouterProc, nodes: ScriptedNodes,
                                                       how: str) -> None:
    start = len(nodes.seen())
    client = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    messages = [{"role": "user", "content": how}]
    chunks = list(client.chat.completions.create(
        model="m", messages=messages, stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        "".join(FIRST_PART + SECOND_PART)
    [(_, second)] = wait_requests(nodes, start + 2)[start + 1:]
    assert second["messages"][-1] == {"role": "assistant", "content": "".join(FIRST_PART)}
    assert "max_tokens" not in second


def test_the_resumed_stream_on_the_wire(router: RouterProc, nodes: ScriptedNodes) -> None:
    payloads = raw_stream(router, model="m", max_tokens=50)
    assert payloads[-1] == b"[DONE]" and payloads.count(b"[DONE]") == 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("error" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        "".join(FIRST_PART + SECOND_PART)
    assert sum("role" in c["choices"][0]["delta"] for c in chunks) == 1
    assert "usage" not in chunks[-1]  # not asked for: none


def test_a_request_with_tools_still_gets_the_error_event(router: RouterProc,
                                                         nodes: ScriptedNodes) -> None:
    start = len(nodes.seen())
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    payloads = raw_stream(router, model="m", tools=tools)
    assert payloads[-1] == b"[DONE]"
    err = json.loads(payloads[-2])["error"]
    assert err["code"] == "bad_gateway"
    chunks = [json.loads(p) for p in payloads[:-2]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        "".join(FIRST_PART)
    time.sleep(0.3)
    assert len(nodes.seen()) == start + 1  # no continuation sent
    assert "not resumed: not resumable" in router.log_text()


def test_resume_off_is_unchanged(router: RouterProc, nodes: ScriptedNodes) -> None:
    start = len(nodes.seen())
    payloads = raw_stream(router, model="m-off", max_tokens=50,
                          stream_options={"include_usage": True})
    assert payloads[-1] == b"[DONE]"
    assert json.loads(payloads[-2])["error"]["code"] == "bad_gateway"
    time.sleep(0.3)
    assert len(nodes.seen()) == start + 1
    assert total(scrape(router), "airouter_stream_resumes_total", backend="off") == 0


def test_no_node_left_to_continue_ends_with_the_error(nodes: ScriptedNodes,
                                                      tmp_path: Path) -> None:
    # One node: nowhere else to go. The client gets the node's failure, as without resume.
    cfg = config(nodes.urls[:1])
    with run_router(cfg, tmp_path) as router:
        payloads = raw_stream(router, model="m", max_tokens=50)
        assert json.loads(payloads[-2])["error"]["code"] == "bad_gateway"
        time.sleep(0.3)
        assert total(scrape(router), "airouter_stream_resumes_total", backend="on",
                     outcome="failed") == 1
