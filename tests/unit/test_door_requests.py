"""Responses and Anthropic Messages requests -> chat request bodies; bad fields name their param."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airouter.doors import anthropic, responses
from airouter.errors import InvalidRequest

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}


def test_responses_items_to_chat() -> None:
    chat, req = responses.to_chat({
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"role": "developer", "content": "use tools"},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "weather in "},
                         {"type": "input_text", "text": "Paris?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]},
        ],
        "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER,
                   "strict": False}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER}},
        "max_output_tokens": 20, "temperature": 0.5, "top_p": 0.9, "stream": True,
        "store": True, "metadata": {"k": "v"}, "reasoning": {"effort": "low"},
    })
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "use tools"},
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER, "strict": False}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "w", "schema": WEATHER}}
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"]) == (20, 0.5, 0.9)
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["reasoning_effort"] == "low"
    assert req.store is True and req.metadata == {"k": "v"} and req.tools[0]["name"] == \
        "get_weather"


def test_responses_string_input() -> None:
    chat, req = responses.to_chat({"model": "m", "input": "hi"})
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert req.stream is False


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "m", "input": "x", "background": True}, "background"),
    ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
     "input[0].content[0].type"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[0].call_id"),
    ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"model": "m", "input": "x", "frobnicate": 1}, "frobnicate"),
    ({"model": "m", "input": []}, "input"),
])
def test_responses_bad_fields(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        responses.to_chat(body)
    assert e.value.param == param
    assert e.value.status == 400


def test_messages_blocks_to_chat() -> None:
    chat, req = anthropic.to_chat({
        "model": "m", "max_tokens": 64,
        "system": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "thanks"}]},
        ],
        "tools": [{"name": "get_weather", "description": "d", "input_schema": WEATHER}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"], "temperature": 0.2, "top_p": 0.5, "top_k": 3,
        "metadata": {"user_id": "u"}, "stream": True,
    })
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER, "description": "d"}}]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["stop"] == ["END"] and req.stop_sequences == ["END"]
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"], chat["top_k"]) == (
        64, 0.2, 0.5, 3)
    assert "metadata" not in chat and chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("choice", "want"), [
    ({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
])
def test_messages_tool_choice(choice: dict[str, Any], want: Any) -> None:
    chat, _ = anthropic.to_chat({"model": "m", "max_tokens": 1, "tool_choice": choice,
                                 "messages": [{"role": "user", "content": "x"}]})
    assert chat["tool_choice"] == want


MSG = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "messages": MSG}, "max_tokens"),
    ({"max_tokens": 1, "messages": MSG}, "model"),
    ({"model": "m", "max_tokens": 1}, "messages"),
    ({"model": "m", "max_tokens": 1, "messages": MSG, "temperature": 1.5}, "temperature"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]},
     "messages[0].role"),
    ({"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": [{"type": "document"}]}]}, "messages[0].content[0].type"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "content": "r"}]}]}, "messages[0].content[0].tool_use_id"),
    ({"model": "m", "max_tokens": 1, "messages": MSG, "tools": [{"name": "f"}]},
     "tools[0].input_schema"),
    ({"model": "m", "max_tokens": 1, "messages": MSG,
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"model": "m", "max_tokens": 1, "messages": MSG, "tool_choice": {"type": "x"}},
     "tool_choice.type"),
    ({"model": "m", "max_tokens": 1, "messages": MSG, "stop_sequences": [""]},
     "stop_sequences[0]"),
    ({"model": "m", "max_tokens": 1, "messages": MSG, "container": "c"}, "container"),
])
def test_messages_bad_fields(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        anthropic.to_chat(body)
    assert e.value.param == param


def test_anthropic_error_shape() -> None:
    err = InvalidRequest("Missing required parameter: 'max_tokens'.", param="max_tokens")
    assert anthropic.error_json(err) == (
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"Missing required parameter: \'max_tokens\'."}}')
    assert [anthropic.error_type(s) for s in (401, 404, 413, 429, 500, 502, 503)] == [
        "authentication_error", "not_found_error", "request_too_large", "rate_limit_error",
        "api_error", "api_error", "overloaded_error"]


def test_backend_errors_name_the_clients_field() -> None:
    from airouter.doors.door import MessagesDoor, ResponsesDoor

    err = InvalidRequest("'response_format' is not supported by this model's backend.",
                         param="response_format", code="unsupported_parameter")
    body = json.loads(ResponsesDoor().error_json(err))["error"]
    assert body["param"] == "text.format" and "'text.format'" in body["message"]
    assert err.param == "response_format"  # the original is left alone
    err = InvalidRequest("'stop' has too many entries.", param="stop")
    body = json.loads(MessagesDoor().error_json(err))
    assert body["error"]["message"] == "'stop_sequences' has too many entries."
    err = InvalidRequest("'tools' is not supported.", param="tools")
    assert json.loads(ResponsesDoor().error_json(err))["error"]["param"] == "tools"
