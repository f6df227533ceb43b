"""Stream-mode conversion keeps `reasoning_content` both ways."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from airouter.backends.base import Endpoint
from airouter.protocol.modes import body_from_chunks, chunks_from_body
from tests.support.chat_chunks import FULL


async def _batches(items: list[bytes]) -> AsyncIterator[list[bytes]]:
    for p in items:
        yield [p]


def test_reasoning_survives_aggregation_and_back() -> None:
    body = asyncio.run(body_from_chunks(Endpoint.CHAT, _batches(FULL)))
    msg = json.loads(body)["choices"][0]["message"]
    assert msg["reasoning_content"] == "Let me think"
    assert msg["content"] == "Hello é😀"
    assert [t["function"]["arguments"] for t in msg["tool_calls"]] == ['{"city": "Paris"}', "{}"]
    chunks = [json.loads(c) for c in chunks_from_body(Endpoint.CHAT, body, True)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[1] == {"reasoning_content": "Let me think"}
    assert deltas[2] == {"content": "Hello é😀"}


def test_a_tool_name_repeated_in_every_delta_is_kept_once() -> None:
    from tests.support.chat_chunks import chunk

    def call(args: str) -> bytes:
        return chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": args}}]})

    body = asyncio.run(body_from_chunks(Endpoint.CHAT, _batches(
        [call('{"city"'), call(': "Paris"}'), chunk({}, "tool_calls")])))
    tc = json.loads(body)["choices"][0]["message"]["tool_calls"][0]
    assert tc["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_the_matched_stop_sequence_survives_aggregation() -> None:
    from tests.support.chat_chunks import chunk

    body = asyncio.run(body_from_chunks(Endpoint.CHAT, _batches(
        [chunk({"content": "a"}), chunk({}, "stop", stop_reason="END")])))
    choice = json.loads(body)["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "END")
    body = asyncio.run(body_from_chunks(Endpoint.CHAT, _batches([chunk({}, "stop")])))
    assert "stop_reason" not in json.loads(body)["choices"][0]
