"""Chat answers -> Anthropic Messages events and objects: event by event, at every split point."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from airouter.doors.anthropic import MessagesRequest, to_chat
from airouter.doors.anthropic_events import MessagesStream, message_from_chat
from airouter.doors.door import _translated, _unframed
from airouter.errors import BadGateway, RouterError
from tests.support.chat_chunks import FULL, TEXT_LENGTH, chunk, parse_events, sse_bytes

EVENT = TypeAdapter(RawMessageStreamEvent)


THINKING = {"type": "enabled", "budget_tokens": 1024}


def req(**extra: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "thinking": THINKING, **extra}
    return to_chat(body)[1]


def run(batches: list[list[bytes]], r: MessagesRequest | None = None) -> bytes:
    s = MessagesStream(r or req(), "alias")
    return b"".join(s.feed(b) for b in batches) + s.end()


def strip_ids(events: list[tuple[str | None, dict[str, Any]]]) -> list[Any]:
    out = []
    for name, d in events:
        d = json.loads(json.dumps(d))
        if d["type"] == "message_start":
            d["message"]["id"] = "<id>"
        out.append((name, d))
    return out


def test_full_stream_event_by_event() -> None:
    events = parse_events(run([FULL]))
    for name, d in events:
        assert name == d["type"]
        if name != "ping":  # the SDK reads pings but has no type for them
            EVENT.validate_python(d)
    types = [d["type"] for _, d in events]
    assert types == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]
    d = [e for _, e in events]
    assert d[0]["message"]["model"] == "alias" and d[0]["message"]["content"] == []
    assert d[2]["content_block"]["type"] == "thinking"
    assert [x["delta"] for x in d[3:6]] == [
        {"type": "thinking_delta", "thinking": "Let me"},
        {"type": "thinking_delta", "thinking": " think"},
        {"type": "signature_delta", "signature": ""},
    ]
    assert d[7] == {"type": "content_block_start", "index": 1,
                    "content_block": {"type": "text", "text": ""}}
    assert [x["delta"]["text"] for x in d[8:10]] == ["Hel", "lo é😀"]
    assert d[11]["content_block"] == {"type": "tool_use", "id": "toolu_call_1",
                                      "name": "get_weather", "input": {}}
    assert "".join(x["delta"]["partial_json"] for x in d[12:14]) == '{"city": "Paris"}'
    assert d[15]["index"] == 3 and d[15]["content_block"]["name"] == "noop"
    assert d[18]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert d[18]["usage"] == {"input_tokens": 11, "output_tokens": 7}


@pytest.mark.parametrize("stream", [FULL, TEXT_LENGTH])
def test_every_split_point_of_the_chunk_stream(stream: list[bytes]) -> None:
    want = strip_ids(parse_events(run([stream])))
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            got = run([stream[:i], stream[i:j], stream[j:]])
            assert strip_ids(parse_events(got)) == want, (i, j)


def test_every_byte_split_of_upstream_sse() -> None:
    data = sse_bytes(FULL)
    want = strip_ids(parse_events(run([FULL])))

    async def go(cut: int) -> bytes:
        async def raw() -> AsyncIterator[bytes]:
            yield data[:cut]
            yield data[cut:]

        s = MessagesStream(req(), "alias")
        return b"".join([b async for b in _translated(s, _unframed(raw()))]) + s.end()

    for cut in range(len(data) + 1):
        assert strip_ids(parse_events(asyncio.run(go(cut)))) == want, cut


def test_length_and_stop_sequence() -> None:
    last = parse_events(run([TEXT_LENGTH]))[-2][1]
    assert last["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    r = req(stop_sequences=["END", "STOP"])
    out = run([[chunk({"content": "x"}), chunk({}, "stop", stop_reason="STOP")]], r)
    assert parse_events(out)[-2][1]["delta"] == {"stop_reason": "stop_sequence",
                                                 "stop_sequence": "STOP"}
    out = run([[chunk({"content": "x"}), chunk({}, "stop")]], r)
    assert parse_events(out)[-2][1]["delta"]["stop_reason"] == "end_turn"


@pytest.mark.parametrize("thinking", [None, {"type": "disabled"}])
def test_reasoning_is_dropped_unless_thinking_is_on(thinking: Any) -> None:
    events = parse_events(run([FULL], req(thinking=thinking)))
    starts = [d["content_block"]["type"] for _, d in events if d["type"] ==
              "content_block_start"]
    assert starts == ["text", "tool_use", "tool_use"]
    assert [d["index"] for _, d in events if d["type"] == "content_block_start"] == [0, 1, 2]


@pytest.mark.parametrize("thinking", [{**THINKING, "display": "summarized"},
                                      {"type": "adaptive"}])
def test_thinking_shown(thinking: Any) -> None:
    want = strip_ids(parse_events(run([FULL])))
    assert strip_ids(parse_events(run([FULL], req(thinking=thinking)))) == want


@pytest.mark.parametrize("stream", [FULL, TEXT_LENGTH])
def test_thinking_omitted_is_an_empty_block_at_every_split(stream: list[bytes]) -> None:
    r = req(thinking={"type": "adaptive", "display": "omitted"})
    want = strip_ids(parse_events(run([stream], r)))
    if stream is FULL:
        thinking = [d for _, d in want if d.get("index") == 0]
        assert [d["type"] for d in thinking] == ["content_block_start", "content_block_delta",
                                                 "content_block_stop"]
        assert thinking[0]["content_block"]["type"] == "thinking"
        assert thinking[1]["delta"] == {"type": "signature_delta", "signature": ""}
    for _, d in want:
        if d["type"] != "ping":
            EVENT.validate_python(d)
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            got = run([stream[:i], stream[i:j], stream[j:]], r)
            assert strip_ids(parse_events(got)) == want, (i, j)


@pytest.mark.parametrize(("thinking", "param"), [
    ({"type": "enabled"}, "thinking.budget_tokens"),
    ({"type": "enabled", "budget_tokens": 1023}, "thinking.budget_tokens"),
    ({"type": "enabled", "budget_tokens": 2000}, "thinking.budget_tokens"),
    ({"type": "enabled", "budget_tokens": "1024"}, "thinking.budget_tokens"),
    ({"type": "adaptive", "display": "full"}, "thinking.display"),
    ({"type": "adaptive", "effort": "high"}, "thinking.effort"),
    ({"type": "on"}, "thinking.type"),
    ("enabled", "thinking"),
])
def test_bad_thinking_names_the_field(thinking: Any, param: str) -> None:
    with pytest.raises(RouterError) as e:
        req(thinking=thinking)
    assert e.value.status == 400 and e.value.param == param


def test_malformed_chunk_raises() -> None:
    s = MessagesStream(req(), "alias")
    s.feed(FULL[:3])
    with pytest.raises(BadGateway):
        s.feed([b"[1]"])


def test_whole_answer() -> None:
    chat = {
        "id": "x", "object": "chat.completion", "created": 5, "model": "alias",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "ok", "reasoning_content": "hmm",
            "tool_calls": [{"id": "call_9", "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    m = json.loads(message_from_chat(req(), json.dumps(chat).encode(), "alias"))
    Message.model_validate(m)
    assert m["id"].startswith("msg_") and m["model"] == "alias"
    assert m["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": ""},
        {"type": "text", "text": "ok"},
        {"type": "tool_use", "id": "toolu_call_9", "name": "f", "input": {"a": 1}},
    ]
    assert m["stop_reason"] == "tool_use" and m["stop_sequence"] is None
    assert m["usage"] == {"input_tokens": 3, "output_tokens": 4}
    for thinking, first in ((None, "text"), ({"type": "disabled"}, "text"),
                            ({"type": "adaptive", "display": "omitted"}, "thinking")):
        m = json.loads(message_from_chat(req(thinking=thinking), json.dumps(chat).encode(), "a"))
        Message.model_validate(m)
        assert m["content"][0]["type"] == first and len(m["content"]) == (3 if first ==
                                                                           "thinking" else 2)
        if first == "thinking":
            assert m["content"][0] == {"type": "thinking", "thinking": "", "signature": ""}
    chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = "[1"
    with pytest.raises(BadGateway):
        message_from_chat(req(), json.dumps(chat).encode(), "alias")


def test_forced_tool_call_finishing_with_stop_is_tool_use() -> None:
    call = chunk({"tool_calls": [{"index": 0, "id": "c", "type": "function",
                                  "function": {"name": "f", "arguments": "{}"}}]})
    out = run([[call, chunk({}, "stop")]])
    assert parse_events(out)[-2][1]["delta"]["stop_reason"] == "tool_use"
