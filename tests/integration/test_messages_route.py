"""POST /v1/messages end to end: the official anthropic client -> router -> fake OpenAI upstream."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import CLIENT_KEY
from tests.integration.test_responses_route import (  # noqa: F401 - fixtures
    ALIASES,
    TOOL_ALIASES,
    door_router,
)
from tests.support.fake_tools import REASONING, TOOL_CALL_ID
from tests.support.fake_upstream import FakeUpstream
from tests.support.router import RouterProc

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def client(door_router: RouterProc) -> anthropic.Anthropic:  # noqa: F811
    # The SDK appends /v1/messages itself and sends the key as x-api-key.
    return anthropic.Anthropic(base_url=door_router.url, api_key=CLIENT_KEY, max_retries=0,
                               timeout=20)


@pytest.mark.parametrize("alias", ALIASES)
def test_text_whole(client: anthropic.Anthropic, alias: str, upstream: FakeUpstream) -> None:
    upstream.clear()
    m = client.messages.create(model=alias, max_tokens=50, messages=USER, system="be brief",
                               metadata={"user_id": "u1"},
                               extra_body={"temperature": 0.5, "top_k": 5})
    assert m.type == "message" and m.role == "assistant" and m.model == alias
    assert m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].type == "text" and m.content[0].text == "echo: hello there"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens == 4 and m.usage.output_tokens == 3
    sent = upstream.requests[-1]["json"]
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, *USER]
    assert sent["max_tokens"] == 50 and "metadata" not in sent
    assert sent["temperature"] == 0.5 and sent["top_k"] == 5


@pytest.mark.parametrize("alias", ALIASES)
def test_text_stream(client: anthropic.Anthropic, alias: str) -> None:
    with client.messages.stream(model=alias, max_tokens=50, messages=USER) as stream:
        events = list(stream)
        final = stream.get_final_message()
    types = [e.type for e in events]
    assert types[0] == "message_start"
    assert types[-2:] == ["message_delta", "message_stop"]
    texts = [e.delta.text for e in events
             if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert "".join(texts) == "echo: hello there"
    assert types.count("content_block_start") == types.count("content_block_stop") == 1
    assert final.content[0].type == "text" and final.content[0].text == "echo: hello there"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3 and final.usage.input_tokens == 2


def test_raw_stream_has_event_lines_and_ping(door_router: RouterProc) -> None:  # noqa: F811
    body = {"model": "echo", "max_tokens": 20, "messages": USER, "stream": True}
    with httpx.stream("POST", door_router.url + "/v1/messages", json=body,
                      headers={"x-api-key": CLIENT_KEY}, timeout=20) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    blocks = [b for b in text.split("\n\n") if b]
    names = [b.split("\n", 1)[0] for b in blocks]
    assert names[:2] == ["event: message_start", "event: ping"]
    assert names[-1] == "event: message_stop" and "[DONE]" not in text


def test_max_tokens_and_create_stream(client: anthropic.Anthropic) -> None:
    m = client.messages.create(model="echo", max_tokens=2, messages=[
        {"role": "user", "content": "one two three four"}])
    assert m.stop_reason == "max_tokens"
    events = list(client.messages.create(model="echo", max_tokens=2, stream=True, messages=[
        {"role": "user", "content": "one two three four"}]))
    deltas = [e for e in events if e.type == "message_delta"]
    assert len(deltas) == 1 and deltas[0].delta.stop_reason == "max_tokens"
    assert deltas[0].usage.output_tokens == 2


@pytest.mark.parametrize("alias", TOOL_ALIASES)
@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip(client: anthropic.Anthropic, upstream: FakeUpstream, alias: str,
                         stream: bool) -> None:
    first: list[Any] = [{"role": "user", "content": "Paris"}]
    # Thinking blocks come only when asked for, as on Anthropic's API.
    thinking_on: Any = {"type": "enabled", "budget_tokens": 1024}
    if stream:
        with client.messages.stream(model=alias, max_tokens=2000, messages=first,
                                    tools=[WEATHER], thinking=thinking_on) as s:
            events = list(s)
            m = s.get_final_message()
        partial = "".join(e.delta.partial_json for e in events if e.type ==
                          "content_block_delta" and e.delta.type == "input_json_delta")
        assert partial == '{"city": "Paris"}'
    else:
        m = client.messages.create(model=alias, max_tokens=2000, messages=first,
                                   tools=[WEATHER], thinking=thinking_on)
    assert [b.type for b in m.content] == ["thinking", "tool_use"]
    thinking, use = m.content
    assert thinking.type == "thinking" and thinking.thinking == REASONING
    assert use.type == "tool_use"
    assert use.id == "toolu_" + TOOL_CALL_ID
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
    assert m.stop_reason == "tool_use"
    assert upstream.requests[-1]["json"]["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"],
        "description": "Weather in a city"}}]

    second: list[Any] = [
        *first,
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "sunny"}]},
    ]
    m2 = client.messages.create(model=alias, max_tokens=50, messages=second, tools=[WEATHER])
    assert m2.content[0].type == "text" and m2.content[0].text == "tool said: sunny"
    assert m2.stop_reason == "end_turn"
    sent = upstream.requests[-1]["json"]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == use.id
    assert sent[-1] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


def test_mid_stream_failure_is_an_error_event(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as e:  # noqa: SIM117
        with client.messages.stream(model="die", max_tokens=50, messages=[
                {"role": "user", "content": "one two three four five"}]) as s:
            for _ in s:
                pass
    assert isinstance(e.value.body, dict) and e.value.body["type"] == "error"


def _err(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    message: str = body["error"]["message"]
    return message


def test_errors_in_anthropic_shape(door_router: RouterProc) -> None:  # noqa: F811
    url = door_router.url + "/v1/messages"
    ok = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    good = {"model": "echo", "max_tokens": 5, "messages": USER}
    _err(httpx.post(url, json=good, timeout=10), 401, "authentication_error")
    _err(httpx.post(url, json=good, headers={"x-api-key": "wrong"}, timeout=10), 401,
         "authentication_error")
    assert "max_tokens" in _err(httpx.post(url, json={**good, "max_tokens": None},
                                           headers=ok, timeout=10), 400, "invalid_request_error")
    _err(httpx.post(url, content=b"{nope", headers=ok, timeout=10), 400, "invalid_request_error")
    _err(httpx.post(url, json={**good, "model": "nope-model"}, headers=ok, timeout=10), 404,
         "not_found_error")
    big = b'{"model":"echo","max_tokens":5,"messages":[{"role":"user","content":"' + \
        b"x" * 1_100_000 + b'"}]}'
    _err(httpx.post(url, content=big, headers=ok, timeout=10), 413, "request_too_large")
    _err(httpx.get(url, headers=ok, timeout=10), 405, "invalid_request_error")
    _err(httpx.post(url + "/nothing", json=good, headers=ok, timeout=10), 404, "not_found_error")
    _err(httpx.post(url, json={**good, "model": "fake-error-429"}, headers=ok, timeout=10), 429,
         "rate_limit_error")
    _err(httpx.post(url, json={**good, "model": "fake-error-500"}, headers=ok, timeout=10), 502,
         "api_error")
    # Bearer works too, as on every route.
    r = httpx.post(url, json=good, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=10)
    assert r.status_code == 200 and r.json()["type"] == "message"


def test_sdk_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope-model", max_tokens=5, messages=USER)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="echo", max_tokens=5, messages=USER,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "tools[0].type" in str(e.value)
    bad = anthropic.Anthropic(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="echo", max_tokens=5, messages=USER)


def test_count_tokens_needs_a_tokenizer(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.count_tokens(model="echo", messages=USER)
    assert isinstance(e.value.body, dict)
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "'echo'" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nope-model", messages=USER)


def test_metrics_label_the_route(client: anthropic.Anthropic,
                                 door_router: RouterProc) -> None:  # noqa: F811
    client.messages.create(model="echo", max_tokens=5, messages=USER)
    text = httpx.get(door_router.url + "/metrics", timeout=10).text
    assert any(ln.startswith("airouter_requests_total") and 'endpoint="messages"' in ln
               and 'status="200"' in ln for ln in text.splitlines())



def test_access_log_line(client: anthropic.Anthropic, door_router: RouterProc) -> None:  # noqa: F811
    import json
    import time

    client.messages.create(model="echo", max_tokens=5, messages=USER,
                           extra_headers={"x-request-id": "rid-doors-1"})
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while not lines and time.monotonic() < deadline:  # written just after the reply
        time.sleep(0.02)
        lines = [json.loads(ln.split(" airouter.access [rid-doors-1] ", 1)[1])
                 for ln in door_router.log_text().splitlines()
                 if "airouter.access [rid-doors-1]" in ln]
    assert len(lines) == 1
    rec = lines[0]
    assert (rec["path"], rec["status"], rec["model"], rec["backend"]) == (
        "/v1/messages", 200, "echo", "fake")
    assert rec["tokens_in"] == 2 and rec["tokens_out"] == 3
    assert CLIENT_KEY not in door_router.log_text()


@pytest.mark.parametrize("alias", TOOL_ALIASES)
def test_stop_sequence_is_named(client: anthropic.Anthropic, alias: str) -> None:
    msgs: Any = [{"role": "user", "content": "one two STOP three"}]
    m = client.messages.create(model=alias, max_tokens=50, messages=msgs,
                               stop_sequences=["NEVER", "STOP"])
    assert m.content[0].type == "text" and m.content[0].text == "echo: one two "
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "STOP")
    with client.messages.stream(model=alias, max_tokens=50, messages=msgs,
                                stop_sequences=["STOP"]) as s:
        final = s.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "STOP")
