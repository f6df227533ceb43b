"""POST /v1/responses end to end: the official openai client -> router -> fake OpenAI upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import CLIENT_KEY, SCOPED_KEY, fake_config
from tests.support.fake_tools import REASONING, TOOL_CALL_ID
from tests.support.fake_upstream import FakeUpstream
from tests.support.openapi import validate, validate_response_event
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router

TOOL_MODELS = """
[models.tools]
backend = "fake"
backend_model = "fake-tools"

[models.tools-nostream]
backend = "fake-nostream"
backend_model = "fake-tools"

[models.tools-always]
backend = "fake-always"
backend_model = "fake-tools"
"""
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
}
# Each alias reaches the fake upstream a different way: streamed relay, whole answers only
# (streams made by the router) and streams only (whole answers aggregated by the router).
ALIASES = ["echo", "echo-nostream", "echo-always"]
TOOL_ALIASES = ["tools", "tools-nostream", "tools-always"]


@pytest.fixture(scope="module")
def door_router(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RouterProc]:
    cfg = fake_config(upstream.url, dead_port=free_port(), extra=TOOL_MODELS)
    with run_router(cfg, tmp_path_factory.mktemp("doors"),
                    env={"FAKE_UPSTREAM_KEY": "sk-up"}) as r:
        yield r


@pytest.fixture
def client(door_router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=door_router.base_url, api_key=CLIENT_KEY, max_retries=0,
                         timeout=20)


def dump(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.model_dump(mode="json", exclude_unset=True)
    return out


def collect(stream: Any) -> list[Any]:
    events = list(stream)
    for e in events:
        validate_response_event(dump(e))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


@pytest.mark.parametrize("alias", ALIASES)
def test_text_whole(client: openai.OpenAI, alias: str) -> None:
    r = client.responses.create(model=alias, input="hello there", instructions="be brief",
                                temperature=0.5)
    validate("Response", dump(r))
    assert r.status == "completed" and r.model == alias
    assert r.output_text == "echo: hello there"
    assert r.instructions == "be brief" and r.temperature == 0.5
    assert r.usage is not None and r.usage.input_tokens == 4 and r.usage.output_tokens == 3
    assert r.usage.total_tokens == 7


@pytest.mark.parametrize("alias", ALIASES)
def test_text_stream(client: openai.OpenAI, alias: str, upstream: FakeUpstream) -> None:
    upstream.clear()
    events = collect(client.responses.create(model=alias, input="hello there world",
                                             stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "echo: hello there world"
    # A whole upstream answer becomes one delta; a relayed stream keeps its pieces.
    assert len(deltas) == 1 if alias == "echo-nostream" else len(deltas) > 1
    final = events[-1].response
    assert final.output_text == "echo: hello there world"
    assert final.usage is not None and final.usage.output_tokens == 4
    sent = upstream.requests[-1]["json"]
    assert sent["messages"] == [{"role": "user", "content": "hello there world"}]


def test_length_is_incomplete(client: openai.OpenAI) -> None:
    r = client.responses.create(model="echo", input="one two three four", max_output_tokens=2)
    validate("Response", dump(r))
    assert r.status == "incomplete"
    assert r.incomplete_details is not None and r.incomplete_details.reason == \
        "max_output_tokens"
    events = collect(client.responses.create(model="echo", input="one two three four",
                                             max_output_tokens=2, stream=True))
    assert events[-1].type == "response.incomplete"


@pytest.mark.parametrize("alias", TOOL_ALIASES)
@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip(client: openai.OpenAI, upstream: FakeUpstream, alias: str,
                                  stream: bool) -> None:
    first_input: list[Any] = [{"role": "user", "content": "Paris"}]
    if stream:
        events = collect(client.responses.create(model=alias, input=first_input,
                                                  tools=[WEATHER], stream=True))
        args = "".join(e.delta for e in events
                       if e.type == "response.function_call_arguments.delta")
        assert args == '{"city": "Paris"}'
        done = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert done[0].name == "get_weather" and done[0].arguments == args
        r = events[-1].response
        assert events[-1].type == "response.completed"
    else:
        r = client.responses.create(model=alias, input=first_input, tools=[WEATHER])
    validate("Response", dump(r))
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    reasoning, call = r.output
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == REASONING
    assert call.type == "function_call"
    assert (call.call_id, call.name, json.loads(call.arguments)) == (
        TOOL_CALL_ID, "get_weather", {"city": "Paris"})
    assert upstream.requests[-1]["json"]["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": WEATHER["parameters"]}}]

    second: list[Any] = [*first_input, *[dump(o) for o in r.output],
                         {"type": "function_call_output", "call_id": call.call_id,
                          "output": "sunny"}]
    r2 = client.responses.create(model=alias, input=second, tools=[WEATHER])
    assert r2.output_text == "tool said: sunny"
    sent = upstream.requests[-1]["json"]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == TOOL_CALL_ID
    assert sent[-1] == {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "sunny"}


def test_mid_stream_failure_ends_failed(client: openai.OpenAI) -> None:
    events = collect(client.responses.create(model="die", input="one two three four five",
                                             stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None
    assert any(e.type == "response.output_text.delta" for e in events)


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "x", "background": True}, "background"),
    ({}, "input"),
])
def test_bad_requests(client: openai.OpenAI, body: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="echo", **body)
    err = e.value.body
    assert isinstance(err, dict) and err["param"] == param
    assert err["type"] == "invalid_request_error"


def test_errors_in_openai_shape(door_router: RouterProc) -> None:
    url = door_router.base_url + "/responses"
    ok = {"Authorization": f"Bearer {CLIENT_KEY}"}
    r = httpx.post(url, json={"model": "echo", "input": "x"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(url, content=b"{nope", headers=ok, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url, json={"model": "nope-model", "input": "x"}, headers=ok, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    scoped = {"Authorization": f"Bearer {SCOPED_KEY}"}
    r = httpx.post(url, json={"model": "tools", "input": "x"}, headers=scoped, timeout=10)
    assert r.status_code == 404
    r = httpx.post(url, content=b'{"model":"echo","input":"' + b"x" * 1_100_000 + b'"}',
                      headers=ok, timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(url, headers=ok, timeout=10)
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.post(url, json={"model": "fake-error-429", "input": "x"}, headers=ok,
                      timeout=10)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"


def test_metrics_label_the_route(client: openai.OpenAI, door_router: RouterProc) -> None:
    client.responses.create(model="echo", input="count me")
    text = httpx.get(door_router.url + "/metrics", timeout=10).text
    assert 'endpoint="responses"' in text
    line = [ln for ln in text.splitlines() if ln.startswith("airouter_requests_total")
            and 'endpoint="responses"' in ln and 'status="200"' in ln and 'model="echo"' in ln]
    assert line and float(line[0].rsplit(" ", 1)[1]) >= 1
