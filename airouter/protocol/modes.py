"""Stream-mode mismatch: whole answers become chunk streams, chunk streams become whole answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from airouter.errors import BadGateway, UpstreamError
from airouter.protocol.endpoints import Endpoint

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _decode_obj(payload: bytes) -> dict[str, Any]:
    try:
        obj = _decode(payload)
    except msgspec.DecodeError:
        raise BadGateway("The backend sent a malformed stream chunk.") from None
    if not isinstance(obj, dict):
        raise BadGateway("The backend sent a malformed stream chunk.")
    if "error" in obj and isinstance(obj["error"], dict):
        err = obj["error"]
        raise UpstreamError(
            str(err.get("message") or "The backend reported an error."),
            status=502,
            code=err.get("code") if isinstance(err.get("code"), str) else "upstream_error",
        )
    return obj


_CHAT_MESSAGE = frozenset({"role", "content", "reasoning_content", "refusal", "tool_calls"})
_CHOICE = frozenset({"index", "message", "delta", "text", "logprobs", "finish_reason"})


def chunks_from_body(endpoint: Endpoint, body: bytes, include_usage: bool) -> list[bytes]:
    """A whole chat or completion answer as the chunk payloads a streaming client expects.
    Members this code does not know (a message's `annotations` or `audio`, a choice's
    `stop_reason`) travel too: in a delta of their own, on the last chunk."""
    resp = _decode_obj(body)
    head: dict[str, Any] = {
        "id": resp.get("id", ""),
        "object": "chat.completion.chunk" if endpoint is Endpoint.CHAT else "text_completion",
        "created": resp.get("created", 0),
        "model": resp.get("model", ""),
    }
    if resp.get("system_fingerprint") is not None:
        head["system_fingerprint"] = resp["system_fingerprint"]
    if include_usage:
        head["usage"] = None
    out: list[bytes] = []

    def emit(choice: dict[str, Any]) -> None:
        out.append(_encode({**head, "choices": [choice]}))

    for i, choice in enumerate(resp.get("choices") or []):
        index = choice.get("index", i)
        finish = choice.get("finish_reason") or "stop"
        logprobs = choice.get("logprobs")
        last: dict[str, Any] = {"index": index, "finish_reason": finish}
        last.update((k, v) for k, v in choice.items() if k not in _CHOICE and v is not None)
        if endpoint is Endpoint.CHAT:
            msg = choice.get("message") or {}
            lp = logprobs if isinstance(logprobs, dict) else {}

            def part(
                delta: dict[str, Any], lps: dict[str, Any] | None = None, at: int = index
            ) -> None:
                emit({"index": at, "delta": delta, "logprobs": lps, "finish_reason": None})

            part({"role": msg.get("role", "assistant"), "content": ""})
            if msg.get("reasoning_content"):
                part({"reasoning_content": msg["reasoning_content"]})
            content_lp = lp.get("content")
            if msg.get("content") or content_lp:
                part({"content": msg.get("content") or ""},
                     {"content": content_lp, "refusal": None} if content_lp else None)
            refusal_lp = lp.get("refusal")
            if msg.get("refusal") or refusal_lp:
                part({"refusal": msg.get("refusal") or ""},
                     {"content": None, "refusal": refusal_lp} if refusal_lp else None)
            if msg.get("tool_calls"):
                part({"tool_calls": [{"index": j, **c} for j, c in enumerate(msg["tool_calls"])]})
            extra = {k: v for k, v in msg.items() if k not in _CHAT_MESSAGE and v is not None}
            if extra:
                part(extra)
            emit({"index": index, "delta": {}, "logprobs": None, **last})
        else:
            if choice.get("text") or logprobs:
                emit({"index": index, "text": choice.get("text") or "", "logprobs": logprobs,
                      "finish_reason": None})
            emit({"index": index, "text": "", "logprobs": None, **last})
    if include_usage and resp.get("usage") is not None:
        out.append(_encode({**head, "choices": [], "usage": resp["usage"]}))
    return out


_LEGACY = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def _merge(into: dict[str, Any], delta: dict[str, Any]) -> None:
    """A delta member this code does not know, accumulated the way deltas build a message:
    text appends, lists extend, objects merge member by member, anything else replaces."""
    for k, v in delta.items():
        have = into.get(k)
        if isinstance(v, str) and isinstance(have, str):
            into[k] = have + v
        elif isinstance(v, list) and isinstance(have, list):
            into[k] = have + v
        elif isinstance(v, dict) and isinstance(have, dict):
            merged = dict(have)
            _merge(merged, v)
            into[k] = merged
        elif v is not None:
            into[k] = v


class _Choice:
    __slots__ = (
        "index", "role", "parts", "reasoning", "refusal", "tools", "finish", "logprobs",
        "refusal_logprobs", "legacy", "extra", "members",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.parts: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.legacy: dict[str, list[Any]] | None = None
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.logprobs: list[Any] | None = None
        self.refusal_logprobs: list[Any] | None = None
        self.extra: dict[str, Any] = {}  # unknown delta members: the message's
        self.members: dict[str, Any] = {}  # unknown choice members (stop_reason, ...)

    def add_chat(self, c: dict[str, Any]) -> None:
        delta = c.get("delta") or {}
        for key, value in delta.items():
            if key == "role":
                if value:
                    self.role = value
            elif key == "content":
                if value:
                    self.parts.append(value)
            elif key == "reasoning_content":
                if value:
                    self.reasoning.append(value)
            elif key == "refusal":
                if value:
                    self.refusal.append(value)
            elif key == "tool_calls":
                for tc in value or ():
                    self._tool_delta(tc)
            elif value is not None:
                _merge(self.extra, {key: value})
        self._add_common(c)

    def _tool_delta(self, tc: dict[str, Any]) -> None:
        slot = self.tools.setdefault(
            tc.get("index", len(self.tools)), {"function": {"name": "", "arguments": ""}}
        )
        if tc.get("id"):
            slot["id"] = tc["id"]
        if tc.get("type"):
            slot["type"] = tc["type"]
        fn = tc.get("function") or {}
        if fn.get("name") and not slot["function"]["name"]:
            # Whole in its first delta; llama.cpp's server repeats it in every one.
            slot["function"]["name"] = fn["name"]
        slot["function"]["arguments"] += fn.get("arguments") or ""

    def add_text(self, c: dict[str, Any]) -> None:
        if c.get("text"):
            self.parts.append(c["text"])
        self._add_common(c)

    def _add_common(self, c: dict[str, Any]) -> None:
        if c.get("finish_reason"):
            self.finish = c["finish_reason"]
        for k, v in c.items():
            # vLLM's stop_reason names the stop sequence that ended the text: Anthropic
            # clients are told it.
            if k not in _CHOICE and v is not None:
                self.members[k] = v
        lp = c.get("logprobs")
        if not isinstance(lp, dict):
            return
        if isinstance(lp.get("content"), list):
            self.logprobs = (self.logprobs or []) + lp["content"]
        if isinstance(lp.get("refusal"), list):
            self.refusal_logprobs = (self.refusal_logprobs or []) + lp["refusal"]
        if isinstance(lp.get("tokens"), list):
            # Completions' legacy shape: parallel lists, concatenated chunk after chunk.
            if self.legacy is None:
                self.legacy = {k: [] for k in _LEGACY}
            for k in _LEGACY:
                self.legacy[k].extend(lp.get(k) or ())

    def chat(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role,
            "content": "".join(self.parts) or None,
            "refusal": "".join(self.refusal) or None,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tools:
            message["tool_calls"] = [
                {
                    "id": t.get("id", ""),
                    "type": t.get("type", "function"),
                    "function": t["function"],
                }
                for _, t in sorted(self.tools.items())
            ]
        elif message["content"] is None:
            message["content"] = ""
        for k, v in self.extra.items():
            message.setdefault(k, v)
        logprobs = (
            {"content": self.logprobs or None, "refusal": self.refusal_logprobs or None}
            if self.logprobs or self.refusal_logprobs
            else None
        )
        return {
            "index": self.index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": self.finish or "stop",
            **self.members,
        }

    def text(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": "".join(self.parts),
            "logprobs": self.legacy,
            "finish_reason": self.finish or "stop",
            **self.members,
        }


class Aggregate:
    """A chunk stream, fed payload by payload, gathered into the one JSON answer a
    non-streaming client expects (sans-IO: the caller reads the stream)."""

    __slots__ = ("chat", "head", "choices", "usage")

    def __init__(self, endpoint: Endpoint) -> None:
        self.chat = endpoint is Endpoint.CHAT
        self.head: dict[str, Any] | None = None
        self.choices: dict[int, _Choice] = {}
        self.usage: Any = None

    def feed(self, payloads: list[bytes]) -> None:
        chat = self.chat
        for payload in payloads:
            c = _decode_obj(payload)
            if self.head is None:
                self.head = c
            if c.get("usage") is not None:
                self.usage = c["usage"]
            for ch in c.get("choices") or ():
                index = ch.get("index", 0)
                slot = self.choices.get(index)
                if slot is None:
                    slot = self.choices[index] = _Choice(index)
                if chat:
                    slot.add_chat(ch)
                else:
                    slot.add_text(ch)

    def body(self) -> bytes:
        head, chat = self.head, self.chat
        if head is None:
            raise BadGateway("The backend closed the stream without sending anything.")
        resp: dict[str, Any] = {
            "id": head.get("id", ""),
            "object": "chat.completion" if chat else "text_completion",
            "created": head.get("created", 0),
            "model": head.get("model", ""),
            "choices": [(c.chat() if chat else c.text()) for _, c in sorted(self.choices.items())],
        }
        if head.get("system_fingerprint") is not None:
            resp["system_fingerprint"] = head["system_fingerprint"]
        if self.usage is not None:
            resp["usage"] = self.usage
        return _encode(resp)


async def body_from_chunks(endpoint: Endpoint, batches: AsyncIterator[list[bytes]]) -> bytes:
    """Aggregate a chunk stream into the one JSON answer a non-streaming client expects."""
    agg = Aggregate(endpoint)
    async for batch in batches:
        agg.feed(batch)
    return agg.body()
