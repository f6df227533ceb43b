"""Tool round trips and reasoning through the Responses and Messages routes, in front of a real
Triton whose mock models answer in the hermes tool-call and qwen3 reasoning formats (the
official openai and anthropic clients, their typed stream helpers, and LangChain)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from tests.support.openapi import validate, validate_response_event
from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, run_triton

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "triton_models"
QWEN = ROOT / "data" / "templates" / "tokenizer_config.json"  # hermes-style tool template
FULL = "Hello, world! Café 😀 The end."
PARIS = {"city": "Paris", "unit": "°C"}
# What the mock generates for [[hermes-one]], in 3-byte pieces (one "token" each).
ONE_CALL = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"unit": "°C"}}\n</tool_call>')
THOUGHT = "The user greets me; answer briefly."
PARAMS = {"type": "object", "properties": {"city": {"type": "string"},
                                           "unit": {"type": "string"}}, "required": ["city"]}
OAI_TOOL: Any = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
                 "parameters": PARAMS}
CLAUDE_TOOL: Any = {"name": "get_weather", "description": "Weather in a city.",
                    "input_schema": PARAMS}
HERMES = f'tokenizer_config = "{QWEN}"\ntool_parser = "hermes"'
MODELS = {
    "ens": ("trtllm_ensemble", HERMES),
    "bls": ("trtllm_bls", HERMES),  # streams cumulative text
    "think": ("trtllm_ensemble", HERMES + '\nreasoning_parser = "qwen3"'),
}
ALIASES = ["ens", "bls"]


def pieces(text: str) -> int:
    return -(-len(text.encode()) // 3)


@pytest.fixture(scope="module")
def request_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("log") / "requests.jsonl"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, request_log: Path
           ) -> Iterator[TritonServer]:
    with run_triton(REPO, log=tmp_path_factory.mktemp("triton") / "triton.log",
                    models=["trtllm_ensemble", "trtllm_bls"],
                    env={"AIROUTER_REQUEST_LOG": str(request_log)}) as server:
        yield server


@pytest.fixture(scope="module")
def router(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProc]:
    cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.triton]
type = "triton"
url = "{triton.grpc_url}"
health_interval = 0
"""
    for alias, (model, extra) in MODELS.items():
        cfg += f'\n[models."{alias}"]\nbackend = "triton"\nbackend_model = "{model}"\n{extra}\n'
    with run_router(cfg, tmp_path_factory.mktemp("router")) as r:
        yield r


@pytest.fixture
def oai(router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="sk-t", max_retries=0, timeout=30)


@pytest.fixture
def claude(router: RouterProc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.url, api_key="sk-t", max_retries=0, timeout=30)


def last_prompt(log: Path) -> str:
    prompt: str = json.loads(log.read_text().splitlines()[-1])["prompt"]
    return prompt


def dump(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.model_dump(mode="json", exclude_unset=True)
    return out


def events_of(stream: Any) -> list[Any]:
    events = list(stream)
    for e in events:
        validate_response_event(dump(e))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    return events


def responses_answer(oai: openai.OpenAI, stream: bool, **kw: Any) -> tuple[Any, list[Any]]:
    """The whole Response (validated), and the stream's events (validated) when streamed."""
    if not stream:
        r = oai.responses.create(**kw)
        validate("Response", dump(r))
        return r, []
    events = events_of(oai.responses.create(stream=True, **kw))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    final = events[-1].response
    validate("Response", dump(final))
    # Every item the stream announced is the one the final response holds, in order.
    done = [e.item for e in events if e.type == "response.output_item.done"]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [dump(i) for i in done] == [dump(o) for o in final.output]
    assert [e.output_index for e in added] == list(range(len(final.output)))
    assert [e.item.id for e in added] == [o.id for o in final.output]
    return final, events


# ---- Responses: a function tool round trip ------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("stream", [False, True])
def test_responses_function_round_trip(oai: openai.OpenAI, request_log: Path, alias: str,
                                       stream: bool) -> None:
    first: list[Any] = [{"role": "user", "content": "Weather in Paris? [[hermes-one]]"}]
    r, events = responses_answer(oai, stream, model=alias, input=first, tools=[OAI_TOOL])
    assert r.status == "completed" and r.model == alias and r.incomplete_details is None
    assert [o.type for o in r.output] == ["function_call"]
    call = r.output[0]
    assert call.type == "function_call" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id and call.id != call.call_id
    assert call.name == "get_weather" and json.loads(call.arguments) == PARIS
    assert r.output_text == ""
    assert r.tools[0].type == "function" and r.tools[0].name == "get_weather"
    assert r.usage is not None and r.usage.output_tokens == pieces(ONE_CALL)
    assert r.usage.input_tokens == len(last_prompt(request_log).split())
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    if stream:
        types = [e.type for e in events]
        assert types[2] == "response.output_item.added"
        assert types[-3:] == ["response.function_call_arguments.done",
                              "response.output_item.done", "response.completed"]
        deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
        assert deltas and all(e.item_id == call.id and e.output_index == 0 for e in deltas)
        assert "".join(e.delta for e in deltas) == call.arguments
        done = events[-3]
        assert (done.item_id, done.name, done.arguments) == (call.id, "get_weather",
                                                              call.arguments)
        assert not any(e.type.startswith("response.output_text") for e in events)

    second: list[Any] = [*first, dump(call), {"type": "function_call_output",
                                              "call_id": call.call_id, "output": "sunny [[plain]]"}]
    r2, events2 = responses_answer(oai, stream, model=alias, input=second, tools=[OAI_TOOL])
    prompt = last_prompt(request_log)
    assert ('<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","unit":"°C"}}\n'
            '</tool_call><|im_end|>') in prompt
    assert "<|im_start|>user\n<tool_response>\nsunny [[plain]]\n</tool_response><|im_end|>" \
        in prompt
    assert r2.status == "completed" and r2.output_text == FULL
    assert [o.type for o in r2.output] == ["message"]
    msg = r2.output[0]
    assert msg.type == "message" and msg.role == "assistant" and msg.status == "completed"
    assert [c.type for c in msg.content] == ["output_text"]
    assert r2.usage is not None and r2.usage.output_tokens == 13
    if stream:
        text = [e.delta for e in events2 if e.type == "response.output_text.delta"]
        assert "".join(text) == FULL and len(text) > 1
        assert [e.type for e in events2][-4:] == [
            "response.output_text.done", "response.content_part.done",
            "response.output_item.done", "response.completed"]


def test_responses_two_calls_after_text(oai: openai.OpenAI) -> None:
    tools = [OAI_TOOL, {"type": "function", "name": "get_time",
                        "parameters": {"type": "object", "properties": {}}}]
    whole, _ = responses_answer(oai, False, model="ens", input="Weather? [[hermes]]",
                                tools=tools)
    streamed, events = responses_answer(oai, True, model="ens", input="Weather? [[hermes]]",
                                        tools=tools)
    for r in (whole, streamed):
        assert [o.type for o in r.output] == ["message", "function_call", "function_call"]
        assert r.output[0].content[0].text.strip() == "Let me check."
        assert [(o.name, json.loads(o.arguments)) for o in r.output[1:]] == [
            ("get_weather", PARIS), ("get_time", {"zone": "Europe/Paris"})]
        assert len({o.call_id for o in r.output[1:]}) == 2
    for i in (1, 2):
        args = "".join(e.delta for e in events if e.type ==
                       "response.function_call_arguments.delta" and e.output_index == i)
        assert args == streamed.output[i].arguments


# ---- Anthropic: a tool round trip ---------------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("stream", [False, True])
def test_messages_tool_round_trip(claude: anthropic.Anthropic, request_log: Path, alias: str,
                                  stream: bool) -> None:
    first: list[Any] = [{"role": "user", "content": "Weather in Paris? [[hermes-one]]"}]
    kw: dict[str, Any] = {"model": alias, "max_tokens": 200, "tools": [CLAUDE_TOOL]}
    if stream:
        with claude.messages.stream(messages=first, **kw) as s:
            events = list(s)
            m = s.get_final_message()
        kinds = [e.type for e in events]
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
        partial = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
        assert partial and json.loads("".join(partial)) == PARIS
        # The helper's snapshot after each input_json delta parses what came so far.
        snaps = [e.snapshot for e in events if e.type == "input_json"]
        assert snaps[-1] == PARIS
        assert events[-2].usage.output_tokens == pieces(ONE_CALL)
    else:
        m = claude.messages.create(messages=first, **kw)
    assert m.model == alias and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["tool_use"]
    use = m.content[0]
    assert use.type == "tool_use" and use.id.startswith("toolu_")
    assert (use.name, use.input) == ("get_weather", PARIS)
    assert m.stop_reason == "tool_use" and m.stop_sequence is None
    assert m.usage.output_tokens == pieces(ONE_CALL)
    assert m.usage.input_tokens == len(last_prompt(request_log).split())

    second: list[Any] = [
        *first,
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": [{"type": "text", "text": "sunny [[plain]]"}]}]},
    ]
    if stream:
        with claude.messages.stream(messages=second, **kw) as s:
            text = "".join(s.text_stream)
            m2 = s.get_final_message()
        assert text == FULL
    else:
        m2 = claude.messages.create(messages=second, **kw)
    prompt = last_prompt(request_log)
    assert ('<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","unit":"°C"}}\n'
            '</tool_call><|im_end|>') in prompt
    assert "<tool_response>\nsunny [[plain]]\n</tool_response>" in prompt
    assert [b.type for b in m2.content] == ["text"]
    assert m2.content[0].type == "text" and m2.content[0].text == FULL
    assert m2.stop_reason == "end_turn" and m2.usage.output_tokens == 13


def test_messages_text_then_two_calls(claude: anthropic.Anthropic) -> None:
    tools = [CLAUDE_TOOL, {"name": "get_time", "input_schema": {"type": "object"}}]
    msgs: Any = [{"role": "user", "content": "Weather? [[hermes]]"}]
    whole = claude.messages.create(model="ens", max_tokens=300, messages=msgs, tools=tools)
    with claude.messages.stream(model="ens", max_tokens=300, messages=msgs, tools=tools) as s:
        events = list(s)
        streamed = s.get_final_message()
    for m in (whole, streamed):
        assert [b.type for b in m.content] == ["text", "tool_use", "tool_use"]
        assert m.content[0].type == "text" and m.content[0].text.strip() == "Let me check."
        uses = [b for b in m.content if b.type == "tool_use"]
        assert [(u.name, u.input) for u in uses] == [("get_weather", PARIS),
                                                     ("get_time", {"zone": "Europe/Paris"})]
        assert len({u.id for u in uses}) == 2 and m.stop_reason == "tool_use"
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == [0, 1, 2]


# ---- reasoning ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_responses_reasoning_item(oai: openai.OpenAI, stream: bool) -> None:
    r, events = responses_answer(oai, stream, model="think", input="Hi [[think]]")
    assert [o.type for o in r.output] == ["reasoning", "message"]
    reasoning = r.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text.strip() == THOUGHT
    assert r.output_text.strip() == "Hello there!"
    if stream:
        thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
        assert thought == reasoning.content[0].text
        kinds = [e.type for e in events]
        assert kinds.index("response.reasoning_text.done") < kinds.index(
            "response.output_text.delta")


def test_responses_reasoning_then_call(oai: openai.OpenAI) -> None:
    r, _ = responses_answer(oai, True, model="think", input="Weather? [[think-hermes]]",
                            tools=[OAI_TOOL])
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    assert r.output[0].content[0].text.strip() == "I need the weather."
    assert json.loads(r.output[1].arguments) == PARIS
    # The reasoning item goes back with the call; it is left out of the next prompt.
    second = [{"role": "user", "content": "Weather? [[think-hermes]]"},
              *[dump(o) for o in r.output],
              {"type": "function_call_output", "call_id": r.output[1].call_id,
               "output": "sunny [[think]]"}]
    r2, _ = responses_answer(oai, False, model="think", input=second, tools=[OAI_TOOL])
    assert r2.output_text.strip() == "Hello there!"


THINKING = {"type": "enabled", "budget_tokens": 1024}


@pytest.mark.parametrize("stream", [False, True])
def test_messages_thinking_when_enabled(claude: anthropic.Anthropic, stream: bool) -> None:
    kw: dict[str, Any] = {"model": "think", "max_tokens": 2000, "thinking": THINKING,
                          "messages": [{"role": "user", "content": "Hi [[think]]"}]}
    if stream:
        with claude.messages.stream(**kw) as s:
            events = list(s)
            m = s.get_final_message()
        thought = "".join(e.thinking for e in events if e.type == "thinking")
        assert thought == m.content[0].thinking  # type: ignore[union-attr]
        sigs = [e for e in events if e.type == "signature"]
        assert len(sigs) == 1
    else:
        m = claude.messages.create(**kw)
    assert [b.type for b in m.content] == ["thinking", "text"]
    thinking, text = m.content
    assert thinking.type == "thinking" and thinking.thinking.strip() == THOUGHT
    assert text.type == "text" and text.text.strip() == "Hello there!"
    assert m.stop_reason == "end_turn"


@pytest.mark.parametrize("thinking", [None, {"type": "disabled"}])
@pytest.mark.parametrize("stream", [False, True])
def test_messages_no_thinking_unless_enabled(claude: anthropic.Anthropic, stream: bool,
                                             thinking: Any) -> None:
    kw: dict[str, Any] = {"model": "think", "max_tokens": 2000,
                          "messages": [{"role": "user", "content": "Hi [[think]]"}]}
    if thinking is not None:
        kw["thinking"] = thinking
    if stream:
        with claude.messages.stream(**kw) as s:
            events = list(s)
            m = s.get_final_message()
        assert not any(e.type == "thinking" for e in events)
    else:
        m = claude.messages.create(**kw)
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].type == "text" and m.content[0].text.strip() == "Hello there!"


def test_messages_thinking_then_tool_round_trip(claude: anthropic.Anthropic) -> None:
    kw: dict[str, Any] = {"model": "think", "max_tokens": 2000, "thinking": THINKING,
                          "tools": [CLAUDE_TOOL]}
    first: Any = [{"role": "user", "content": "Weather? [[think-hermes]]"}]
    with claude.messages.stream(messages=first, **kw) as s:
        m = s.get_final_message()
    assert [b.type for b in m.content] == ["thinking", "tool_use"]
    assert m.stop_reason == "tool_use"
    use = m.content[1]
    assert use.type == "tool_use" and use.input == PARIS
    second: Any = [*first, {"role": "assistant", "content": [b.model_dump() for b in m.content]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                 "content": "sunny [[think]]"}]}]
    m2 = claude.messages.create(messages=second, **kw)
    assert [b.type for b in m2.content] == ["thinking", "text"]
    assert m2.stop_reason == "end_turn"


# ---- LangChain ----------------------------------------------------------------------


def get_weather(city: str, unit: str = "°C") -> str:
    """Weather in a city."""
    return "sunny"


def _openai(router: RouterProc, model: str) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=router.base_url, api_key=SecretStr("sk-t"),
                      use_responses_api=True, max_retries=0, timeout=30)


def _anthropic(router: RouterProc, model: str) -> ChatAnthropic:
    return ChatAnthropic(model_name=model, base_url=router.url, api_key=SecretStr("sk-t"),
                         max_retries=0, timeout=30, stop=None)


@pytest.mark.parametrize("make", [_openai, _anthropic])
@pytest.mark.parametrize("stream", [False, True])
def test_langchain_tool_round_trip(router: RouterProc, make: Any, stream: bool) -> None:
    llm = make(router, "ens").bind_tools([get_weather])
    question = [HumanMessage("Weather in Paris? [[hermes-one]]")]
    if stream:
        chunks = list(llm.stream(question))
        first = chunks[0]
        for c in chunks[1:]:
            first += c
    else:
        first = llm.invoke(question)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", PARIS)]
    call_id = first.tool_calls[0]["id"]
    assert call_id and call_id.startswith(("call_", "toolu_"))
    assert first.usage_metadata is not None
    assert first.usage_metadata["output_tokens"] == pieces(ONE_CALL)
    second = llm.invoke([*question, first, ToolMessage("sunny [[plain]]", tool_call_id=call_id)])
    assert second.text == FULL and not second.tool_calls


# ---- forced calls (guided decoding) -------------------------------------------------

MOCK_ARGS = {"city": "mock", "unit": "mock"}  # what the guided mock fills in for PARAMS


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
@pytest.mark.parametrize("stream", [False, True])
def test_responses_forced_call(oai: openai.OpenAI, choice: Any, stream: bool) -> None:
    r, events = responses_answer(oai, stream, model="ens", input="Weather?", tools=[OAI_TOOL],
                                 tool_choice=choice)
    assert r.status == "completed"
    assert [(o.type, o.name, json.loads(o.arguments)) for o in r.output] == [
        ("function_call", "get_weather", MOCK_ARGS)]
    assert dump(r)["tool_choice"] == choice
    if stream:
        args = "".join(e.delta for e in events
                       if e.type == "response.function_call_arguments.delta")
        assert args == r.output[0].arguments


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"},
                                    {"type": "any", "disable_parallel_tool_use": True}])
@pytest.mark.parametrize("stream", [False, True])
def test_messages_forced_call(claude: anthropic.Anthropic, choice: Any, stream: bool) -> None:
    kw: dict[str, Any] = {"model": "ens", "max_tokens": 200, "tools": [CLAUDE_TOOL],
                          "tool_choice": choice,
                          "messages": [{"role": "user", "content": "Weather?"}]}
    if stream:
        with claude.messages.stream(**kw) as s:
            m = s.get_final_message()
    else:
        m = claude.messages.create(**kw)
    assert [(b.type, getattr(b, "name", None), getattr(b, "input", None))
            for b in m.content] == [("tool_use", "get_weather", MOCK_ARGS)]
    assert m.stop_reason == "tool_use"


# ---- stop sequences -----------------------------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("stream", [False, True])
def test_messages_stop_sequence_is_named(claude: anthropic.Anthropic, alias: str,
                                         stream: bool) -> None:
    """The router enforces stop sequences on Triton itself, so it knows which one matched."""
    kw: dict[str, Any] = {"model": alias, "max_tokens": 100, "stop_sequences": ["zzz", "world"],
                          "messages": [{"role": "user", "content": "Hi"}]}
    if stream:
        with claude.messages.stream(**kw) as s:
            text = "".join(s.text_stream)
            m = s.get_final_message()
        assert text == "Hello, "
    else:
        m = claude.messages.create(**kw)
    assert m.content[0].type == "text" and m.content[0].text == "Hello, "
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "world")
    kw["stop_sequences"] = ["zzz"]
    m = claude.messages.create(**kw)
    assert (m.stop_reason, m.stop_sequence) == ("end_turn", None)


@pytest.mark.parametrize("alias", ALIASES)
def test_chat_names_the_matched_stop_as_vllm_does(oai: openai.OpenAI, alias: str) -> None:
    msgs: Any = [{"role": "user", "content": "Hi"}]
    r = oai.chat.completions.create(model=alias, messages=msgs, stop=["zzz", "world"])
    validate("CreateChatCompletionResponse", dump(r))
    assert r.choices[0].message.content == "Hello, " and r.choices[0].finish_reason == "stop"
    assert dump(r)["choices"][0]["stop_reason"] == "world"
    chunks = list(oai.chat.completions.create(model=alias, messages=msgs, stop=["world"],
                                              stream=True))
    assert dump(chunks[-1])["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                              "finish_reason": "stop", "stop_reason": "world"}
    r = oai.chat.completions.create(model=alias, messages=msgs, stop=["zzz"])
    assert "stop_reason" not in dump(r)["choices"][0]


# ---- cut calls and one call at a time -----------------------------------------------

CUT = 22  # tokens: the call stops inside its arguments, after "Paris"


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_cut_by_the_token_limit(oai: openai.OpenAI, claude: anthropic.Anthropic,
                                       stream: bool) -> None:
    r, _ = responses_answer(oai, stream, model="ens", input="W? [[hermes-one]]",
                            tools=[OAI_TOOL], max_output_tokens=CUT)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert [(o.type, o.status, o.name, json.loads(o.arguments)) for o in r.output] == [
        ("function_call", "incomplete", "get_weather", {"city": "Paris"})]
    assert r.usage is not None and r.usage.output_tokens == CUT
    kw: dict[str, Any] = {"model": "ens", "max_tokens": CUT, "tools": [CLAUDE_TOOL],
                          "messages": [{"role": "user", "content": "W? [[hermes-one]]"}]}
    if stream:
        with claude.messages.stream(**kw) as s:
            m = s.get_final_message()
    else:
        m = claude.messages.create(**kw)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == CUT
    assert [(b.type, getattr(b, "input", None)) for b in m.content] == [
        ("tool_use", {"city": "Paris"})]


def test_one_call_at_a_time(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    tools: Any = [OAI_TOOL, {"type": "function", "name": "get_time",
                             "parameters": {"type": "object", "properties": {}}}]
    for stream in (False, True):
        r, _ = responses_answer(oai, stream, model="ens", input="W? [[hermes]]", tools=tools,
                                parallel_tool_calls=False)
        assert r.parallel_tool_calls is False
        assert [(o.type, getattr(o, "name", None)) for o in r.output] == [
            ("message", None), ("function_call", "get_weather")]
    m = claude.messages.create(
        model="ens", max_tokens=300, messages=[{"role": "user", "content": "W? [[hermes]]"}],
        tools=[CLAUDE_TOOL, {"name": "get_time", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert [b.type for b in m.content] == ["text", "tool_use"] and m.stop_reason == "tool_use"


def test_langchain_reasoning(router: RouterProc) -> None:
    out = _openai(router, "think").invoke("Hi [[think]]")
    assert [b["type"] for b in out.content] == ["reasoning", "text"]  # type: ignore[index]
    reasoning = out.content[0]
    assert isinstance(reasoning, dict)
    assert reasoning["content"][0]["text"].strip() == THOUGHT
    assert out.text.strip() == "Hello there!"
    claude = ChatAnthropic(model_name="think", base_url=router.url, api_key=SecretStr("sk-t"),
                           max_retries=0, timeout=30, stop=None, max_tokens=2000,
                           thinking=THINKING)
    for msg in (claude.invoke("Hi [[think]]"), sum_chunks(claude.stream("Hi [[think]]"))):
        assert [b["type"] for b in msg.content] == ["thinking", "text"]  # type: ignore[index]
        assert msg.content[0]["thinking"].strip() == THOUGHT  # type: ignore[index]
        assert msg.text.strip() == "Hello there!"
    # The thinking block goes back with the call and the result; the model answers.
    tools = claude.bind_tools([get_weather])
    ask = [HumanMessage("Weather? [[think-hermes]]")]
    first = tools.invoke(ask)
    assert [b["type"] for b in first.content] == ["thinking", "tool_use"]  # type: ignore[index]
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", PARIS)]
    result = ToolMessage("sunny [[think]]", tool_call_id=first.tool_calls[0]["id"])
    second = tools.invoke([*ask, first, result])
    assert second.text.strip() == "Hello there!" and not second.tool_calls


def sum_chunks(chunks: Iterator[Any]) -> Any:
    it = iter(chunks)
    total = next(it)
    for c in it:
        total += c
    return total


@pytest.mark.parametrize("stream", [False, True])
def test_responses_reasoning_then_text_cut(oai: openai.OpenAI, stream: bool) -> None:
    """The limit cuts the text: the reasoning item ended, the message is incomplete (the
    streamed items equal the final ones: responses_answer)."""
    r, _ = responses_answer(oai, stream, model="think", input="Hi [[think]]",
                            max_output_tokens=20)
    assert r.status == "incomplete" and r.usage is not None and r.usage.output_tokens == 20
    assert [(o.type, o.status) for o in r.output] == [("reasoning", "completed"),
                                                      ("message", "incomplete")]
    assert r.output_text.strip() == "Hello"
