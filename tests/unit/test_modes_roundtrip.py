"""Stream-mode conversion, as properties: a chunk stream gathered into an answer keeps every
member the API defines and any it does not, and that answer streamed again gathers back to
itself (stream -> answer -> stream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from airouter.protocol.endpoints import Endpoint
from airouter.protocol.modes import Aggregate, body_from_chunks, chunks_from_body

text = st.text(max_size=6)
token = st.fixed_dictionaries({"token": text, "logprob": st.floats(-20, 0), "bytes": st.none(),
                               "top_logprobs": st.just([])})
annotation = st.fixed_dictionaries({"type": st.just("url_citation"), "url": text})


@st.composite
def chat_delta(draw: st.DrawFn, first: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    delta: dict[str, Any] = {}
    if first:
        delta["role"] = "assistant"
    for key in ("content", "reasoning_content", "refusal", "x_note"):
        if draw(st.booleans()):
            delta[key] = draw(text)
    if draw(st.booleans()):
        delta["annotations"] = draw(st.lists(annotation, max_size=2))
    if draw(st.booleans()):
        audio: dict[str, Any] = {"data": draw(text), "transcript": draw(text)}
        if first:
            audio["id"] = "audio_1"
        delta["audio"] = audio
    if draw(st.booleans()):
        delta["tool_calls"] = [{"index": draw(st.integers(0, 1)),
                                "function": {"arguments": draw(text)}}]
    logprobs = None
    if draw(st.booleans()):
        logprobs = {"content": draw(st.lists(token, max_size=2)),
                    "refusal": draw(st.one_of(st.none(), st.lists(token, max_size=2)))}
    return delta, logprobs


@st.composite
def chat_stream(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 5))
    choices = draw(st.integers(1, 2))
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
            "system_fingerprint": draw(st.one_of(st.none(), st.just("fp_1")))}
    out = []
    for i in range(n):
        for c in range(choices):
            delta, lp = draw(chat_delta(i == 0))
            choice: dict[str, Any] = {"index": c, "delta": delta, "logprobs": lp,
                                      "finish_reason": None}
            if draw(st.booleans()):
                choice["x_choice"] = draw(st.integers(0, 9))
            out.append({**head, "choices": [choice]})
    for c in range(choices):
        last = {"index": c, "delta": {}, "logprobs": None,
                "finish_reason": draw(st.sampled_from(["stop", "length", "tool_calls"])),
                "stop_reason": draw(st.one_of(st.none(), st.just("END"), st.just(7)))}
        out.append({**head, "choices": [last]})
    out.append({**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n,
                                                 "total_tokens": 3 + n}})
    return out


@st.composite
def completion_stream(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 5))
    head = {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m"}
    out = []
    for _ in range(n):
        t = draw(text)
        lp = None
        if draw(st.booleans()):
            lp = {"tokens": [t], "token_logprobs": [draw(st.floats(-20, 0))],
                  "top_logprobs": [{t: -0.5}], "text_offset": [draw(st.integers(0, 99))]}
        out.append({**head, "choices": [{"index": 0, "text": t, "logprobs": lp,
                                         "finish_reason": None}]})
    out.append({**head, "choices": [{"index": 0, "text": "", "logprobs": None,
                                     "finish_reason": draw(st.sampled_from(["stop", "length"])),
                                     "x_choice": "kept"}]})
    out.append({**head, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": n,
                                                 "total_tokens": 1 + n}})
    return out


def gather(endpoint: Endpoint, chunks: list[bytes], split: int | None = None) -> dict[str, Any]:
    agg = Aggregate(endpoint)
    if split is None:
        agg.feed(chunks)
    else:
        agg.feed(chunks[:split])
        agg.feed(chunks[split:])
    return json.loads(agg.body())  # type: ignore[no-any-return]


def joined(stream: list[dict[str, Any]], index: int, key: str) -> str:
    return "".join(c["choices"][0]["delta"].get(key, "") for c in stream
                   if c["choices"] and c["choices"][0]["index"] == index)


def concat(stream: list[dict[str, Any]], index: int, get: Any) -> list[Any]:
    out: list[Any] = []
    for c in stream:
        if c["choices"] and c["choices"][0]["index"] == index:
            out += get(c["choices"][0]) or []
    return out


@settings(max_examples=150, deadline=None)
@given(chat_stream(), st.data())
def test_chat_stream_to_answer_keeps_every_member(stream: list[dict[str, Any]],
                                                  data: st.DataObject) -> None:
    payloads = [json.dumps(c).encode() for c in stream]
    split = data.draw(st.integers(0, len(payloads)))
    answer = gather(Endpoint.CHAT, payloads, split)
    for choice in answer["choices"]:
        i, msg = choice["index"], choice["message"]
        chunks = [c for c in stream if c["choices"] and c["choices"][0]["index"] == i]
        tools = concat(stream, i, lambda ch: ch["delta"].get("tool_calls"))
        assert msg["content"] == (joined(stream, i, "content") or (None if tools else ""))
        assert msg.get("reasoning_content", "") == joined(stream, i, "reasoning_content")
        assert msg["refusal"] == (joined(stream, i, "refusal") or None)
        assert msg.get("x_note", "") == joined(stream, i, "x_note")
        assert msg.get("annotations", []) == concat(
            stream, i, lambda ch: ch["delta"].get("annotations"))
        audio = [ch["choices"][0]["delta"]["audio"] for ch in chunks
                 if "audio" in ch["choices"][0]["delta"]]
        if audio:
            assert msg["audio"]["data"] == "".join(a["data"] for a in audio)
            assert msg["audio"]["transcript"] == "".join(a["transcript"] for a in audio)
        else:
            assert "audio" not in msg
        slots = sorted({t["index"] for t in tools})
        assert len(msg.get("tool_calls") or ()) == len(slots)
        for slot, call in zip(slots, msg.get("tool_calls") or (), strict=True):
            assert call["function"]["arguments"] == "".join(
                t["function"]["arguments"] for t in tools if t["index"] == slot)
        lp_content = concat(stream, i, lambda ch: (ch["logprobs"] or {}).get("content"))
        lp_refusal = concat(stream, i, lambda ch: (ch["logprobs"] or {}).get("refusal"))
        if lp_content or lp_refusal:
            assert choice["logprobs"]["content"] == (lp_content or None)
            assert choice["logprobs"]["refusal"] == (lp_refusal or None)
        else:
            assert choice["logprobs"] is None
        last = chunks[-1]["choices"][0]
        assert choice["finish_reason"] == last["finish_reason"]
        assert choice.get("stop_reason") == last["stop_reason"]
        kept = [ch["choices"][0]["x_choice"] for ch in chunks if "x_choice" in ch["choices"][0]]
        assert choice.get("x_choice") == (kept[-1] if kept else None)
    assert answer["usage"] == stream[-1]["usage"]
    assert answer.get("system_fingerprint") == stream[0]["system_fingerprint"]
    # ...and streamed again, it gathers back to itself.
    again = chunks_from_body(Endpoint.CHAT, json.dumps(answer).encode(), True)
    assert gather(Endpoint.CHAT, again) == answer


@settings(max_examples=100, deadline=None)
@given(completion_stream())
def test_completion_stream_to_answer_and_back(stream: list[dict[str, Any]]) -> None:
    payloads = [json.dumps(c).encode() for c in stream]
    answer = gather(Endpoint.COMPLETIONS, payloads)
    [choice] = answer["choices"]
    assert choice["text"] == "".join(c["choices"][0]["text"] for c in stream if c["choices"])
    legacy = [c["choices"][0]["logprobs"] for c in stream
              if c["choices"] and c["choices"][0]["logprobs"]]
    if legacy:
        for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            assert choice["logprobs"][k] == [v for lp in legacy for v in lp[k]]
    else:
        assert choice["logprobs"] is None
    assert choice["finish_reason"] == stream[-2]["choices"][0]["finish_reason"]
    assert choice["x_choice"] == "kept"
    assert answer["usage"] == stream[-1]["usage"]
    again = chunks_from_body(Endpoint.COMPLETIONS, json.dumps(answer).encode(), True)
    assert gather(Endpoint.COMPLETIONS, again) == answer


def test_body_from_chunks_reads_batches_as_they_come() -> None:
    payloads = [json.dumps({"id": "x", "model": "m", "choices": [
        {"index": 0, "delta": {"content": t}, "finish_reason": None}]}).encode()
        for t in ("a", "b")]

    async def batches() -> AsyncIterator[list[bytes]]:
        for p in payloads:
            yield [p]

    got = json.loads(asyncio.run(body_from_chunks(Endpoint.CHAT, batches())))
    assert got["choices"][0]["message"]["content"] == "ab"
