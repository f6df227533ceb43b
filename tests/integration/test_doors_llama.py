"""The Responses and Messages routes in front of a real model: SmolLM2 behind llama.cpp's
OpenAI server (llama-cpp-python), with its `chatml-function-calling` chat format for tools.

SmolLM2-135M calls a tool reliably only when the tool is forced (the server then constrains
the arguments by grammar); with `auto` it mostly answers in text, so the round trips force it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.support.llama_server import LlamaServer, run_llama_server
from tests.support.openapi import validate, validate_response_event
from tests.support.router import RouterProc, run_router

pytestmark = pytest.mark.llm

QUESTION = "What is the weather in Paris?"
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    log = tmp_path_factory.mktemp("llama-doors") / "llama.log"
    with run_llama_server(log=log, chat_format="chatml-function-calling") as server:
        yield server


@pytest.fixture(scope="module")
def router(llama: LlamaServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProc]:
    cfg = f"""
[server]
api_keys = ["sk-real"]

[backends.llama]
type = "openai"
base_url = "{llama.url}"

[backends.llama-always]
type = "openai"
base_url = "{llama.url}"
stream = "always"

[models.smol]
backend = "llama"
backend_model = "smollm2"

[models.smol-always]
backend = "llama-always"
backend_model = "smollm2"
"""
    with run_router(cfg, tmp_path_factory.mktemp("router-llama-doors")) as r:
        yield r


@pytest.fixture
def oai(router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="sk-real", max_retries=0, timeout=120)


@pytest.fixture
def claude(router: RouterProc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.url, api_key="sk-real", max_retries=0,
                               timeout=120)


def test_responses_text(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="smol", input="Say hello.", max_output_tokens=12)
    validate("Response", r.model_dump(mode="json", exclude_unset=True))
    assert r.output_text.strip() and r.status in ("completed", "incomplete")
    events = list(oai.responses.create(model="smol", input="Say hello.", max_output_tokens=12,
                                       stream=True))
    for e in events:
        validate_response_event(e.model_dump(mode="json", exclude_unset=True))
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.strip() and text == events[-1].response.output_text


def test_messages_text(claude: anthropic.Anthropic) -> None:
    m = claude.messages.create(model="smol", max_tokens=12,
                               messages=[{"role": "user", "content": "Say hello."}])
    assert m.content[0].type == "text" and m.content[0].text.strip()
    assert m.stop_reason in ("end_turn", "max_tokens")
    with claude.messages.stream(model="smol", max_tokens=12,
                                messages=[{"role": "user", "content": "Say hello."}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip() and final.content[0].type == "text" and final.content[0].text == text


@pytest.mark.parametrize("stream", [False, True])
def test_responses_tool_round_trip(oai: openai.OpenAI, stream: bool) -> None:
    tool: Any = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                 "parameters": PARAMS}
    kw: Any = {"model": "smol", "input": QUESTION, "tools": [tool], "max_output_tokens": 40,
               "tool_choice": {"type": "function", "name": "get_weather"}}
    if stream:
        events = list(oai.responses.create(**kw, stream=True))
        for e in events:
            validate_response_event(e.model_dump(mode="json", exclude_unset=True))
        r = events[-1].response
        deltas = "".join(e.delta for e in events
                         if e.type == "response.function_call_arguments.delta")
    else:
        r = oai.responses.create(**kw)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    args = json.loads(calls[0].arguments)
    assert isinstance(args.get("city"), str)
    if stream:
        assert deltas == calls[0].arguments
    second = [{"role": "user", "content": QUESTION},
              calls[0].model_dump(mode="json", exclude_unset=True),
              {"type": "function_call_output", "call_id": calls[0].call_id,
               "output": "sunny, 21 C"}]
    r2 = oai.responses.create(model="smol", input=second, max_output_tokens=20)
    assert r2.output_text.strip()


@pytest.mark.parametrize(("alias", "stream"), [("smol", False), ("smol", True),
                                             ("smol-always", False)])
def test_messages_tool_round_trip(claude: anthropic.Anthropic, alias: str, stream: bool) -> None:
    """smol-always: the upstream streams, the router assembles the whole answer."""
    kw: Any = {"model": alias, "max_tokens": 40,
               "messages": [{"role": "user", "content": QUESTION}],
               "tools": [{"name": "get_weather", "description": "Weather in a city",
                          "input_schema": PARAMS}],
               "tool_choice": {"type": "tool", "name": "get_weather"}}
    if stream:
        with claude.messages.stream(**kw) as s:
            m = s.get_final_message()
    else:
        m = claude.messages.create(**kw)
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    assert uses[0].id.startswith("toolu_") and isinstance(uses[0].input, dict)
    assert m.stop_reason == "tool_use"
    follow = [*kw["messages"],
              {"role": "assistant", "content": [u.model_dump() for u in uses]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                            "content": "sunny, 21 C"}]}]
    m2 = claude.messages.create(model="smol", max_tokens=20, messages=follow)
    assert m2.content and m2.content[0].type == "text" and m2.content[0].text.strip()
