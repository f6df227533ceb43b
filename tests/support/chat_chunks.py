"""Scripted chat.completion.chunk streams and SSE parsing for the front-door translator tests."""

from __future__ import annotations

import json
from typing import Any

Json = dict[str, Any]


def chunk(delta: Json | None, finish: str | None = None, usage: Json | None = None,
          **choice_extra: Any) -> bytes:
    obj: Json = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
                 "model": "m"}
    if delta is None:
        obj["choices"] = []
    else:
        obj["choices"] = [{"index": 0, "delta": delta, "logprobs": None,
                           "finish_reason": finish, **choice_extra}]
    obj["usage"] = usage
    return json.dumps(obj).encode()


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}

# Reasoning, text, then two tool calls whose arguments arrive in pieces.
FULL = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "Let me"}),
    chunk({"reasoning_content": " think"}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo é😀"}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                           "function": {"name": "noop", "arguments": "{}"}}]}),
    chunk({}, "tool_calls"),
    chunk(None, usage=USAGE),
]

TEXT_LENGTH = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "one "}),
    chunk({"content": "two"}),
    chunk({}, "length"),
    chunk(None, usage=USAGE),
]


def sse_bytes(payloads: list[bytes]) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"


def parse_events(data: bytes) -> list[tuple[str | None, Json]]:
    """(event name, data object) of each SSE event in `data`."""
    out: list[tuple[str | None, Json]] = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        name = None
        payload = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                payload.append(line[6:])
        out.append((name, json.loads("\n".join(payload))))
    return out


_VOLATILE = {"id", "item_id", "created_at", "completed_at"}


def normalized(events: list[tuple[str | None, Json]]) -> list[Any]:
    """Events with random ids and clock times replaced, for comparing two runs."""
    ids: dict[str, str] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k in _VOLATILE and isinstance(x, (str, int)):
                    out[k] = ids.setdefault(str(x), f"<{k}{len(ids)}>") if k in (
                        "id", "item_id") else "<t>"
                else:
                    out[k] = walk(x)
            return out
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return [walk([n, d]) for n, d in events]
