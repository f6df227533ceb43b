"""Random chat chunk streams, cut at random points: both translators give the same events as
for the uncut stream, and those events add up to what the chunks said."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from airouter.doors.anthropic import to_chat as messages_request
from airouter.doors.anthropic_events import MessagesStream
from airouter.doors.responses import to_chat as responses_request
from airouter.doors.responses_events import ResponsesStream
from tests.support.chat_chunks import USAGE, chunk, normalized, parse_events

text = st.text(min_size=1, max_size=6)
# A stream: reasoning pieces, then text pieces, then tool calls whose arguments come in pieces.
streams = st.tuples(
    st.lists(text, max_size=3),
    st.lists(text, max_size=4),
    st.lists(st.tuples(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.lists(text, max_size=3)),
             max_size=2),
    st.sampled_from(["stop", "length", "tool_calls"]),
    st.booleans(),
)


def build(spec: tuple[Any, ...]) -> tuple[list[bytes], str, list[str], list[str]]:
    reasoning, content, calls, finish, usage = spec
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"reasoning_content": r}) for r in reasoning]
    out += [chunk({"content": c}) for c in content]
    for i, (name, args) in enumerate(calls):
        out.append(chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                          "function": {"name": name, "arguments": ""}}]}))
        out += [chunk({"tool_calls": [{"index": i, "function": {"arguments": a}}]})
                for a in args]
    out.append(chunk({}, finish))
    if usage:
        out.append(chunk(None, usage=USAGE))
    return out, "".join(content), ["".join(a) for _, a in calls], [n for n, _ in calls]


def cut(items: list[bytes], points: list[int]) -> list[list[bytes]]:
    bounds = sorted({min(p, len(items)) for p in points})
    out, prev = [], 0
    for b in [*bounds, len(items)]:
        out.append(items[prev:b])
        prev = b
    return out


def responses(batches: list[list[bytes]]) -> bytes:
    s = ResponsesStream(responses_request({"model": "m", "input": "x", "stream": True})[1], "a")
    return b"".join(s.feed(b) for b in batches) + s.end()


def messages(batches: list[list[bytes]]) -> bytes:
    req = messages_request({"model": "m", "max_tokens": 1, "stream": True,
                            "messages": [{"role": "user", "content": "x"}]})[1]
    s = MessagesStream(req, "a")
    return b"".join(s.feed(b) for b in batches) + s.end()


@settings(max_examples=200, deadline=None)
@given(spec=streams, points=st.lists(st.integers(0, 40), max_size=5))
def test_responses_any_cut(spec: tuple[Any, ...], points: list[int]) -> None:
    items, content, args, names = build(spec)
    whole = parse_events(responses([items]))
    assert normalized(parse_events(responses(cut(items, points)))) == normalized(whole)
    data = [d for _, d in whole]
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    added = [d["item"]["id"] for d in data if d["type"] == "response.output_item.added"]
    done = [d["item"]["id"] for d in data if d["type"] == "response.output_item.done"]
    assert added == done
    deltas = "".join(d["delta"] for d in data if d["type"] == "response.output_text.delta")
    assert deltas == content
    final = data[-1]["response"]
    calls = [o for o in final["output"] if o["type"] == "function_call"]
    assert [c["arguments"] for c in calls] == args and [c["name"] for c in calls] == names
    assert final["status"] == ("incomplete" if spec[3] == "length" else "completed")


@settings(max_examples=200, deadline=None)
@given(spec=streams, points=st.lists(st.integers(0, 40), max_size=5))
def test_messages_any_cut(spec: tuple[Any, ...], points: list[int]) -> None:
    items, content, args, names = build(spec)
    whole = parse_events(messages([items]))

    def strip(events: list[tuple[str | None, dict[str, Any]]]) -> list[Any]:
        return [(n, {**d, "message": None} if d["type"] == "message_start" else d)
                for n, d in events]

    assert strip(parse_events(messages(cut(items, points)))) == strip(whole)
    data = [d for _, d in whole]
    starts = [d["index"] for d in data if d["type"] == "content_block_start"]
    stops = [d["index"] for d in data if d["type"] == "content_block_stop"]
    assert starts == stops == list(range(len(starts)))
    texts = "".join(d["delta"]["text"] for d in data if d["type"] == "content_block_delta"
                    and d["delta"]["type"] == "text_delta")
    assert texts == content
    uses = [d["content_block"]["name"] for d in data if d["type"] == "content_block_start"
            and d["content_block"]["type"] == "tool_use"]
    assert uses == names
    tool_blocks = [d["index"] for d in data if d["type"] == "content_block_start"
                   and d["content_block"]["type"] == "tool_use"]
    assert ["".join(d["delta"]["partial_json"] for d in data
                    if d["type"] == "content_block_delta" and d["index"] == i)
            for i in tool_blocks] == args
    want = {"length": "max_tokens", "tool_calls": "tool_use"}.get(spec[3], "end_turn")
    if names and spec[3] != "length":
        want = "tool_use"
    assert data[-2]["delta"]["stop_reason"] == want
    assert [d["type"] for d in data[-2:]] == ["message_delta", "message_stop"]
