"""Chat answers -> Anthropic Messages objects and stream events (sans-IO).

Content blocks come in the order the chat stream opens them: thinking (from
`reasoning_content`), text, then one `tool_use` block per tool call.

`stop_sequence`: a chat `stop` finish covers both the model's own end and a matched stop
sequence. The router names the sequence when the backend reports it (a choice's
`stop_reason`, as vLLM sends); otherwise the answer says `end_turn`.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from airouter.errors import BadGateway
from airouter.protocol.anthropic import MessagesRequest
from airouter.streaming.chat_read import chunk_obj, first_choice, token_counts, tool_calls

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def tool_id(chat_id: str) -> str:
    return chat_id if chat_id.startswith("toolu_") else "toolu_" + (chat_id or os.urandom(12).hex())


def stop_reason(req: MessagesRequest, choice: dict[str, Any], called: bool
                ) -> tuple[str, str | None]:
    finish = choice.get("finish_reason")
    if finish == "length":
        return "max_tokens", None
    # A forced tool choice finishes with `stop` on OpenAI (and llama.cpp's server): an answer
    # that ends in a tool call is a tool_use turn either way.
    if finish in ("tool_calls", "function_call") or called:
        return "tool_use", None
    if finish == "content_filter":
        return "refusal", None
    matched = choice.get("stop_reason")
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
    if req.thinking and isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": str(message["content"])})
    calls = tool_calls(message)
    for call_id, name, args in calls:
        content.append({"type": "tool_use", "id": tool_id(call_id), "name": name,
                        "input": _tool_input(args)})
    reason, seq = stop_reason(req, choice, bool(calls))
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


class MessagesStream:
    """Feed chat chunk payloads; get Anthropic SSE events (`event:` line + data)."""

    def __init__(self, req: MessagesRequest, alias: str) -> None:
        self.req = req
        self.alias = alias
        self.id = _new_id("msg_")
        self.index = -1
        self.kind: str | None = None
        self.calls: dict[int, int] = {}  # chat tool call index -> block index
        self.prefix = b""
        self.choice: dict[str, Any] = {}
        self.usage: Any = None
        self.started = False

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

    def feed(self, payloads: list[bytes]) -> bytes:
        out: list[bytes] = [] if self.started else [self.start()]
        for payload in payloads:
            obj = chunk_obj(payload)
            if obj.get("usage") is not None:
                self.usage = obj["usage"]
            choice = first_choice(obj)
            if choice is None:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if self.req.thinking and isinstance(reasoning, str) and reasoning:
                if self.kind != "thinking":
                    self._open("thinking", {"type": "thinking", "thinking": "",
                                            "signature": ""}, out)
                out.append(self._delta(reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                if self.kind != "text":
                    self._open("text", {"type": "text", "text": ""}, out)
                out.append(self._delta(content))
            for tc in delta.get("tool_calls") or ():
                self._tool_delta(tc, out)
            if choice.get("finish_reason"):
                self.choice = choice
        return b"".join(out)

    def _tool_delta(self, tc: dict[str, Any], out: list[bytes]) -> None:
        index = tc.get("index", len(self.calls))
        fn = tc.get("function") or {}
        if index not in self.calls:
            self._open("tool_use", {"type": "tool_use", "id": tool_id(str(tc.get("id") or "")),
                                    "name": str(fn.get("name") or ""), "input": {}}, out)
            self.calls[index] = self.index
        elif self.calls[index] != self.index:
            raise BadGateway("The backend interleaved the arguments of two tool calls.")
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            out.append(self._delta(args))

    def end(self) -> bytes:
        out: list[bytes] = [] if self.started else [self.start()]
        self._close(out)
        reason, seq = stop_reason(self.req, self.choice, bool(self.calls))
        prompt, completion, _, _ = token_counts(self.usage)
        out.append(_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": seq},
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }))
        out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        return b"".join(out)
