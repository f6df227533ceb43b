"""Chat answers -> Anthropic Messages objects and stream events (sans-IO).

Content blocks come in the order the chat stream opens them: thinking (from
`reasoning_content`), text, then one `tool_use` block per tool call. Thinking blocks come only
when the request turned thinking on (`enabled` or `adaptive`), empty with `display: omitted`.

`stop_sequence`: a chat `stop` finish covers both the model's own end and a matched stop
sequence. The router names the sequence when the backend reports it (a choice's
`stop_reason`, as vLLM sends); otherwise the answer says `end_turn`.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from airouter.doors.anthropic import MessagesRequest
from airouter.doors.chat_read import (
    ChunkChoice,
    ChunkEvents,
    ToolCallDelta,
    chunk_obj,
    first_choice,
    token_counts,
    tool_calls,
)
from airouter.errors import BadGateway

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def tool_id(chat_id: str) -> str:
    return chat_id if chat_id.startswith("toolu_") else "toolu_" + (chat_id or os.urandom(12).hex())


def stop_reason(req: MessagesRequest, finish: Any, matched: Any, called: bool
                ) -> tuple[str, str | None]:
    if finish == "length":
        return "max_tokens", None
    # A forced tool choice finishes with `stop` on OpenAI (and llama.cpp's server): an answer
    # that ends in a tool call is a tool_use turn either way.
    if finish in ("tool_calls", "function_call") or called:
        return "tool_use", None
    if finish == "content_filter":
        return "refusal", None
    if isinstance(matched, str) and matched in req.stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def _tool_input(args: str) -> dict[str, Any]:
    try:
        value = _decode(args) if args.strip() else {}
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise BadGateway("The backend produced tool arguments that are not a JSON object.")
    return value


def message_from_chat(req: MessagesRequest, chat: bytes, alias: str) -> bytes:
    """A whole chat.completion -> a whole Anthropic `message`."""
    obj = chunk_obj(chat)
    alias = str(obj.get("model") or alias)
    choice = first_choice(obj) or {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if req.thinking is not None and isinstance(reasoning, str) and reasoning:
        shown = reasoning if req.thinking == "summarized" else ""
        content.append({"type": "thinking", "thinking": shown, "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": str(message["content"])})
    calls = tool_calls(message)
    for call_id, name, args in calls:
        content.append({"type": "tool_use", "id": tool_id(call_id), "name": name,
                        "input": _tool_input(args)})
    reason, seq = stop_reason(req, choice.get("finish_reason"), choice.get("stop_reason"),
                              bool(calls))
    prompt, completion, _, _ = token_counts(obj.get("usage"))
    return _encode({
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": alias,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": seq,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    })


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"


_DELTA_HEAD = {
    "thinking": (b"thinking_delta", b"thinking"),
    "text": (b"text_delta", b"text"),
    "tool_use": (b"input_json_delta", b"partial_json"),
}


class MessagesStream(ChunkEvents):
    """Feed chat chunk payloads; get Anthropic SSE events (`event:` line + data)."""

    def __init__(self, req: MessagesRequest, alias: str) -> None:
        self.req = req
        self.alias = alias
        self.id = _new_id("msg_")
        self.index = -1
        self.kind: str | None = None
        self.calls: dict[int, int] = {}  # chat tool call index -> block index
        self.prefix = b""
        self.finish: str | None = None
        self.matched: str | int | None = None
        self.usage: Any = None
        self.started = False
        self.thinking = req.thinking is not None
        self.thinking_text = req.thinking == "summarized"

    def start(self) -> bytes:
        """The stream's opening events (sent with the first chunk's, or by end)."""
        self.started = True
        return _event("message_start", {"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.alias,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }}) + PING

    def _close(self, out: list[bytes]) -> None:
        if self.kind is None:
            return
        if self.kind == "thinking":
            out.append(_event("content_block_delta", {
                "type": "content_block_delta", "index": self.index,
                "delta": {"type": "signature_delta", "signature": ""}}))
        out.append(_event("content_block_stop", {"type": "content_block_stop",
                                                 "index": self.index}))
        self.kind = None

    def _open(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self.index += 1
        self.kind = kind
        out.append(_event("content_block_start", {"type": "content_block_start",
                                                  "index": self.index, "content_block": block}))
        name, field = _DELTA_HEAD[kind]
        self.prefix = (b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                       b'"index":' + str(self.index).encode() + b',"delta":{"type":"' + name
                       + b'","' + field + b'":')

    def _delta(self, text: str) -> bytes:
        return self.prefix + _encode(text) + b"}}\n\n"

    def _reasoning(self, text: str, out: list[bytes]) -> None:
        if not self.thinking:
            return
        if self.kind != "thinking":
            self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
        if self.thinking_text:
            out.append(self._delta(text))

    def _content(self, text: str, out: list[bytes]) -> None:
        if self.kind != "text":
            self._open("text", {"type": "text", "text": ""}, out)
        out.append(self._delta(text))

    def _finished(self, choice: ChunkChoice) -> None:
        self.finish, self.matched = choice.finish_reason, choice.stop_reason

    def _tool_delta(self, tc: ToolCallDelta, out: list[bytes]) -> None:
        index = len(self.calls) if tc.index is None else tc.index
        fn = tc.function
        if index not in self.calls:
            name = fn.name if fn is not None else None
            self._open("tool_use", {"type": "tool_use", "id": tool_id(tc.id or ""),
                                    "name": name or "", "input": {}}, out)
            self.calls[index] = self.index
        elif self.calls[index] != self.index:
            raise BadGateway("The backend interleaved the arguments of two tool calls.")
        args = fn.arguments if fn is not None else None
        if args:
            out.append(self._delta(args))

    def end(self) -> bytes:
        out: list[bytes] = [] if self.started else [self.start()]
        self._close(out)
        reason, seq = stop_reason(self.req, self.finish, self.matched, bool(self.calls))
        prompt, completion, _, _ = token_counts(self.usage)
        out.append(_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": seq},
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }))
        out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        return b"".join(out)
