"""ChoiceStream and the guided-call readers: chunk shapes, and the same answer at every split."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from airouter.backends.base import Endpoint
from airouter.output.choice import ChoiceStream
from airouter.output.chunks import ChunkWriter
from airouter.output.events import OutputParser, chain
from airouter.output.guided_calls import CallArray, NamedCall, call_array_schema
from airouter.output.parsers import reasoning_parser, tool_parser
from airouter.protocol.modes import body_from_chunks
from tests.support.openapi import validate

CALLS = '[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "°C"}}, ' \
    '{"name": "get_time", "parameters": {}}]'


NAMES = ["get_weather", "get_time"]


def splits(text: str) -> list[list[str]]:
    """`text` whole, and cut in two at every position."""
    return [[text]] + [[text[:i], text[i:]] for i in range(1, len(text))]


def run(stream: ChoiceStream, parts: list[str], reason: str = "stop") -> list[dict[str, Any]]:
    out: list[bytes] = [stream.writer.role()]
    for p in parts:
        out += stream.text(p)
    out += stream.finish(reason)
    chunks = [json.loads(c) for c in out]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    return chunks


def whole(chunks: list[dict[str, Any]], endpoint: Endpoint = Endpoint.CHAT) -> dict[str, Any]:
    async def batches() -> AsyncIterator[list[bytes]]:
        yield [json.dumps(c).encode() for c in chunks]

    return json.loads(asyncio.run(body_from_chunks(endpoint, batches())))


def writer(**kw: Any) -> ChunkWriter:
    return ChunkWriter(Endpoint.CHAT, "m", False, **kw)


def call_deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]


def test_plain_text_is_one_content_chunk_per_delta() -> None:
    chunks = run(ChoiceStream(writer()), ["Hel", "lo"])
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [
        {"content": "Hel"},
        {"content": "lo"},
    ]
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_a_matched_stop_sequence_is_named_on_the_last_chunk() -> None:
    for endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS):
        w = ChunkWriter(endpoint, "m", True)
        last = json.loads(w.finish("stop", 'say "bye"'))
        assert last["choices"][0]["stop_reason"] == 'say "bye"'
        assert last["choices"][0]["finish_reason"] == "stop" and last["usage"] is None
    stream = ChoiceStream(writer())
    chunks = [json.loads(c) for c in [*stream.text("Hi"), *stream.finish("stop", "END")]]
    validate("CreateChatCompletionStreamResponse", chunks[-1])
    assert chunks[-1]["choices"][0]["stop_reason"] == "END"
    assert whole(chunks)["choices"][0]["stop_reason"] == "END"
    # A call that ended the answer is the reason it stopped, not the stop sequence.
    stream = ChoiceStream(writer(), NamedCall("f"))
    stream.text('{"a": 1}')
    last = json.loads(stream.finish("stop", "END")[-1])
    assert last["choices"][0]["finish_reason"] == "tool_calls"
    assert "stop_reason" not in last["choices"][0]


@pytest.mark.parametrize("parts", splits('  {"city": "Paris", "unit": "°C"}'))
def test_named_call_streams_arguments_in_openai_shape(parts: list[str]) -> None:
    chunks = run(ChoiceStream(writer(), NamedCall("get_weather")), parts)
    deltas = call_deltas(chunks)
    first = deltas[0]
    assert first["index"] == 0 and first["type"] == "function"
    assert first["id"].startswith("call_") and len(first["id"]) > 10
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
               for d in deltas[1:])
    args = "".join(d["function"]["arguments"] for d in deltas)
    assert json.loads(args) == {"city": "Paris", "unit": "°C"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    body = whole(chunks)
    msg = body["choices"][0]["message"]
    validate("CreateChatCompletionResponse", body)
    assert msg["content"] is None and msg["tool_calls"][0]["id"] == first["id"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("parts", splits(CALLS))
def test_call_array_gives_every_call_at_any_split(parts: list[str]) -> None:
    chunks = run(ChoiceStream(writer(), CallArray(NAMES)), parts)
    msg = whole(chunks)["choices"][0]["message"]
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
             for c in msg["tool_calls"]]
    assert calls == [("get_weather", {"city": "Paris", "unit": "°C"}), ("get_time", {})]
    assert len({c["id"] for c in msg["tool_calls"]}) == 2


def test_parallel_false_sends_only_the_first_call() -> None:
    chunks = run(ChoiceStream(writer(), CallArray(NAMES), parallel=False), [CALLS])
    assert {d["index"] for d in call_deltas(chunks)} == {0}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("parts", splits('[{"name": "x", "para'))
def test_call_array_that_is_not_calls_stays_text(parts: list[str]) -> None:
    chunks = run(ChoiceStream(writer(), CallArray(NAMES)), parts, "length")
    msg = whole(chunks)["choices"][0]
    assert msg["message"]["content"] == '[{"name": "x", "para'
    assert msg["finish_reason"] == "length" and "tool_calls" not in msg["message"]


def test_call_array_cut_inside_a_call_closes_it() -> None:
    chunks = run(ChoiceStream(writer(), CallArray(NAMES)),
                 ['[{"name": "get_time", "parameters": {"zone": "Eu'], "length")
    msg = whole(chunks)["choices"][0]
    assert json.loads(msg["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "zone": "Eu"
    }
    assert msg["finish_reason"] == "length"


def test_length_cut_call_keeps_finish_reason_length() -> None:
    chunks = run(ChoiceStream(writer(), NamedCall("f")), ['{"a": '], "length")
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_call_array_schema_lists_each_tool() -> None:
    tools = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "b"}}]
    schema = call_array_schema(tools, parallel=False)
    assert schema["maxItems"] == 1 and schema["minItems"] == 1
    names = [v["properties"]["name"]["enum"] for v in schema["items"]["anyOf"]]
    assert names == [["a"], ["b"]]


LP = [
    {"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
     "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]},
    {"token": "!", "logprob": -1.5, "bytes": [33], "top_logprobs": []},
]


def test_logprobs_ride_on_the_next_content_chunk() -> None:
    s = ChoiceStream(writer(), logprobs=True)
    s.logprobs(LP[:1])
    held = s.text("Hi")
    s.logprobs(LP[1:])
    chunks = [json.loads(c) for c in [*held, *s.text("!"), *s.finish("stop")]]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    assert chunks[0]["choices"][0]["logprobs"] == {"content": LP[:1], "refusal": None}
    assert chunks[1]["choices"][0]["logprobs"] == {"content": LP[1:], "refusal": None}
    body = whole(chunks)
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["logprobs"]["content"] == LP


def test_completion_logprobs_use_the_legacy_shape_with_offsets() -> None:
    w = ChunkWriter(Endpoint.COMPLETIONS, "m", False)
    s = ChoiceStream(w, logprobs=True, chat=False)
    out = []
    for entry in LP:
        s.logprobs([entry])
        out += s.text(entry["token"])
    out += s.finish("length")
    chunks = [json.loads(c) for c in out]
    body = whole(chunks, Endpoint.COMPLETIONS)
    validate("CreateCompletionResponse", body)
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["Hi", "!"],
        "token_logprobs": [-0.5, -1.5],
        "top_logprobs": [{"Hi": -0.5}, {}],
        "text_offset": [0, 2],
    }


def test_choices_share_id_and_differ_in_index() -> None:
    a = writer()
    b = writer(index=2, id=a.id, created=a.created)
    ca, cb = json.loads(a.text("x")), json.loads(b.reasoning("y"))
    assert ca["id"] == cb["id"] and ca["created"] == cb["created"]
    assert cb["choices"][0]["index"] == 2
    assert cb["choices"][0]["delta"] == {"reasoning_content": "y"}


def test_parsers_satisfy_the_protocol() -> None:
    parsers: list[OutputParser] = [NamedCall("f"), CallArray(NAMES)]
    assert not any(p.called for p in parsers)


ANSWER = (
    "<think>\nWeather first.\n</think>\n\nLet me check. <tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)


def chained() -> OutputParser:
    return chain(reasoning_parser("qwen3"), tool_parser("hermes", ["get_weather", "get_time"]))


@pytest.mark.parametrize("parts", splits(ANSWER))
def test_reasoning_text_and_calls_at_every_split(parts: list[str]) -> None:
    chunks = run(ChoiceStream(writer(), chained()), parts)
    assert "tool_call>" not in json.dumps(chunks) and "think>" not in json.dumps(chunks)
    calls = call_deltas(chunks)
    starts = [d for d in calls if "id" in d]
    assert [(d["index"], d["function"]["name"]) for d in starts] == [
        (0, "get_weather"), (1, "get_time")
    ]
    body = whole(chunks)
    validate("CreateChatCompletionResponse", body)
    msg = body["choices"][0]["message"]
    assert msg["reasoning_content"] == "\nWeather first.\n"
    assert msg["content"] == "\n\nLet me check. "
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in msg["tool_calls"]] == [
        ("get_weather", {"city": "Paris", "unit": "°C"}), ("get_time", {})
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_logprobs_of_markup_are_dropped_and_of_text_kept() -> None:
    s = ChoiceStream(writer(), chained(), logprobs=True)
    out: list[bytes] = []
    for piece in ["<think>", "hm", "</think>", "Hi", "!"]:
        s.logprobs([{**LP[1], "token": piece}])
        out += s.text(piece)
    out += s.finish("stop")
    body = whole([json.loads(c) for c in out])
    assert body["choices"][0]["message"]["content"] == "Hi!"
    assert [e["token"] for e in body["choices"][0]["logprobs"]["content"]] == ["Hi", "!"]


def test_whole_answers_round_trip_through_chunks() -> None:
    from airouter.protocol.modes import chunks_from_body

    chat = {
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                     "message": {"role": "assistant", "content": "ok", "refusal": None,
                                 "reasoning_content": "hm",
                                 "tool_calls": [{"id": "call_1", "type": "function",
                                                 "function": {"name": "f",
                                                              "arguments": "{}"}}]}}],
    }
    chunks = [json.loads(c) for c in chunks_from_body(Endpoint.CHAT, json.dumps(chat).encode(),
                                                      False)]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1] == {"reasoning_content": "hm"} and deltas[2] == {"content": "ok"}
    assert whole(chunks)["choices"][0]["message"] == chat["choices"][0]["message"]
    legacy = {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{"a": -1.0}],
              "text_offset": [0]}
    text = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "a", "logprobs": legacy, "finish_reason": "stop"}]}
    chunks = [json.loads(c) for c in chunks_from_body(Endpoint.COMPLETIONS,
                                                      json.dumps(text).encode(), False)]
    assert whole(chunks, Endpoint.COMPLETIONS)["choices"][0]["logprobs"] == legacy


def test_call_array_streams_calls_before_it_ends() -> None:
    s = ChoiceStream(writer(), CallArray(NAMES))
    sent = [c for i in range(0, len(CALLS) - 2, 3) for c in s.text(CALLS[i : i + 3])]
    deltas = call_deltas([json.loads(c) for c in sent])
    assert [d["function"]["name"] for d in deltas if "id" in d] == ["get_weather", "get_time"]
