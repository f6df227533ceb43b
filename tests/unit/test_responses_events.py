"""Chat answers -> Responses API events and objects: event by event, at every split point."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from airouter.doors.door import _translated, _unframed
from airouter.doors.responses import ResponsesRequest, to_chat
from airouter.doors.responses_events import ResponsesStream, response_from_chat
from airouter.errors import BadGateway
from tests.support.chat_chunks import (
    FULL,
    TEXT_LENGTH,
    USAGE,
    chunk,
    normalized,
    parse_events,
    sse_bytes,
)
from tests.support.openapi import validate, validate_response_event


def req() -> ResponsesRequest:
    return to_chat({"model": "m", "input": "hi", "stream": True})[1]


def run(batches: list[list[bytes]]) -> bytes:
    s = ResponsesStream(req(), "alias")
    return b"".join(s.feed(b) for b in batches) + s.end()


def test_full_stream_event_by_event() -> None:
    events = parse_events(run([FULL]))
    types = [d["type"] for _, d in events]
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    assert [n for n, _ in events] == types  # the SSE `event:` line names each one
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    for _, d in events:
        validate_response_event(d)
    by_type = {}
    for _, d in events:
        by_type.setdefault(d["type"], []).append(d)
    assert by_type["response.created"][0]["response"]["status"] == "in_progress"
    assert [d["delta"] for d in by_type["response.output_text.delta"]] == ["Hel", "lo é😀"]
    assert by_type["response.output_text.done"][0]["text"] == "Hello é😀"
    assert by_type["response.reasoning_text.done"][0]["text"] == "Let me think"
    args_done = by_type["response.function_call_arguments.done"]
    assert [(d["name"], d["arguments"]) for d in args_done] == [
        ("get_weather", '{"city": "Paris"}'), ("noop", "{}")]
    final = by_type["response.completed"][0]["response"]
    validate("Response", final)
    assert final["status"] == "completed" and final["model"] == "alias"
    assert [o["type"] for o in final["output"]] == [
        "reasoning", "message", "function_call", "function_call"]
    assert final["output"][1]["content"][0]["text"] == "Hello é😀"
    assert final["output"][2]["call_id"] == "call_1"
    assert final["output"][2]["arguments"] == '{"city": "Paris"}'
    assert final["usage"]["input_tokens"] == 11 and final["usage"]["output_tokens"] == 7
    assert final["usage"]["total_tokens"] == 18
    # Items keep their ids from added to done, and deltas name their item.
    added = [d["item"]["id"] for d in by_type["response.output_item.added"]]
    done = [d["item"]["id"] for d in by_type["response.output_item.done"]]
    assert added == done == [o["id"] for o in final["output"]]
    assert {d["item_id"] for d in by_type["response.output_text.delta"]} == {added[1]}


def test_length_finish_is_incomplete() -> None:
    events = parse_events(run([TEXT_LENGTH]))
    last = events[-1][1]
    assert last["type"] == "response.incomplete"
    validate_response_event(last)
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["output"][0]["status"] == "incomplete"


# Reasoning that ended, then text that the token limit cut.
THOUGHT_THEN_CUT = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "Let me"}),
    chunk({"content": "Hel"}),
    chunk({}, "length"),
    chunk(None, usage=USAGE),
]


def test_only_the_item_the_limit_cut_is_incomplete() -> None:
    events = [d for _, d in parse_events(run([THOUGHT_THEN_CUT]))]
    for d in events:
        validate_response_event(d)
    done = [d["item"] for d in events if d["type"] == "response.output_item.done"]
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.incomplete"
    assert [(o["type"], o["status"]) for o in final["output"]] == [
        ("reasoning", "completed"), ("message", "incomplete")]
    assert done == final["output"]
    for i in range(len(THOUGHT_THEN_CUT) + 1):
        got = run([THOUGHT_THEN_CUT[:i], THOUGHT_THEN_CUT[i:]])
        assert normalized(parse_events(got)) == normalized(parse_events(run([THOUGHT_THEN_CUT])))
    whole = {"id": "x", "object": "chat.completion", "created": 5, "model": "alias",
             "choices": [{"index": 0, "finish_reason": "length", "message": {
                 "role": "assistant", "content": "Hel", "reasoning_content": "Let me"}}]}
    r = json.loads(response_from_chat(req(), json.dumps(whole).encode(), "alias"))
    validate("Response", r)
    assert [(o["type"], o["status"]) for o in r["output"]] == [
        ("reasoning", "completed"), ("message", "incomplete")]


def test_a_failure_leaves_finished_items_completed() -> None:
    s = ResponsesStream(req(), "alias")
    out = s.feed(FULL[:6]) + s.fail("The backend broke off the stream.")
    events = [d for _, d in parse_events(out)]
    final = events[-1]["response"]
    assert [(o["type"], o["status"]) for o in final["output"]] == [
        ("reasoning", "completed"), ("message", "completed"), ("function_call", "incomplete")]
    done = [d["item"] for d in events if d["type"] == "response.output_item.done"]
    assert done == final["output"][:2]


@pytest.mark.parametrize("stream", [FULL, TEXT_LENGTH])
def test_every_split_point_of_the_chunk_stream(stream: list[bytes]) -> None:
    want = normalized(parse_events(run([stream])))
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            got = run([stream[:i], stream[i:j], stream[j:]])
            assert normalized(parse_events(got)) == want, (i, j)


def _through_sse(data: bytes, cut: int) -> bytes:
    async def raw() -> AsyncIterator[bytes]:
        yield data[:cut]
        yield data[cut:]

    async def go() -> bytes:
        s = ResponsesStream(req(), "alias")
        out = [b async for b in _translated(s, _unframed(raw()))]
        return b"".join(out) + s.end()

    return asyncio.run(go())


def test_every_byte_split_of_upstream_sse() -> None:
    data = sse_bytes(FULL)
    want = normalized(parse_events(run([FULL])))
    for cut in range(len(data) + 1):
        assert normalized(parse_events(_through_sse(data, cut))) == want, cut


def test_failure_mid_stream_ends_failed() -> None:
    s = ResponsesStream(req(), "alias")
    head = s.feed(FULL[:4])
    with pytest.raises(BadGateway):
        s.feed([b"not json"])
    events = parse_events(head + s.fail("The backend broke off the stream."))
    last = events[-1][1]
    assert last["type"] == "response.failed"
    validate_response_event(last)
    assert last["response"]["error"]["code"] == "server_error"
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))


def test_empty_stream_still_opens_and_completes() -> None:
    s = ResponsesStream(req(), "alias")
    types = [d["type"] for _, d in parse_events(s.end())]
    assert types == ["response.created", "response.in_progress", "response.completed"]


def test_whole_answer() -> None:
    chat = {
        "id": "x", "object": "chat.completion", "created": 5, "model": "alias",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "ok", "reasoning_content": "hmm",
            "tool_calls": [{"id": "call_9", "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                  "completion_tokens_details": {"reasoning_tokens": 2}},
    }
    r = json.loads(response_from_chat(req(), json.dumps(chat).encode(), "alias"))
    validate("Response", r)
    assert r["status"] == "completed" and r["created_at"] == 5
    assert [o["type"] for o in r["output"]] == ["reasoning", "message", "function_call"]
    assert r["output"][2] | {"id": None} == {
        "id": None, "type": "function_call", "call_id": "call_9", "name": "f",
        "arguments": '{"a":1}', "status": "completed"}
    assert r["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    chat["choices"][0] = {"index": 0, "finish_reason": "length",
                          "message": {"role": "assistant", "content": "cut"}}
    r = json.loads(response_from_chat(req(), json.dumps(chat).encode(), "alias"))
    validate("Response", r)
    assert r["status"] == "incomplete"
    assert r["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stop_chunk_without_usage() -> None:
    s = ResponsesStream(req(), "alias")
    out = s.feed([chunk({"content": "a"}), chunk({}, "stop")]) + s.end()
    final = parse_events(out)[-1][1]["response"]
    assert final["status"] == "completed" and "usage" not in final
