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


def chunks_from_body(endpoint: Endpoint, body: bytes, include_usage: bool) -> list[bytes]:
    """A whole chat or completion answer as the chunk payloads a streaming client expects."""
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
        if endpoint is Endpoint.CHAT:
            msg = choice.get("message") or {}
            emit(
                {
                    "index": index,
                    "delta": {"role": msg.get("role", "assistant"), "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
            if msg.get("reasoning_content"):
                emit(
                    {
                        "index": index,
                        "delta": {"reasoning_content": msg["reasoning_content"]},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            if msg.get("content"):
                emit(
                    {
                        "index": index,
                        "delta": {"content": msg["content"]},
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": None,
                    }
                )
            if msg.get("refusal"):
                emit(
                    {
                        "index": index,
                        "delta": {"refusal": msg["refusal"]},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            if msg.get("tool_calls"):
                calls = [{"index": j, **c} for j, c in enumerate(msg["tool_calls"])]
                emit(
                    {
                        "index": index,
                        "delta": {"tool_calls": calls},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            last = {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}
            if choice.get("stop_reason") is not None:
                last["stop_reason"] = choice["stop_reason"]
            emit(last)
        else:
            if choice.get("text"):
                emit(
                    {
                        "index": index,
                        "text": choice["text"],
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": None,
                    }
                )
            emit({"index": index, "text": "", "logprobs": None, "finish_reason": finish})
    if include_usage and resp.get("usage") is not None:
        out.append(_encode({**head, "choices": [], "usage": resp["usage"]}))
    return out


_LEGACY = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


class _Choice:
    __slots__ = (
        "index", "role", "parts", "reasoning", "refusal", "tools", "finish", "logprobs", "legacy",
        "stop_reason",
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
        self.stop_reason: Any = None

    def add_chat(self, c: dict[str, Any]) -> None:
        delta = c.get("delta") or {}
        if delta.get("role"):
            self.role = delta["role"]
        if delta.get("content"):
            self.parts.append(delta["content"])
        if delta.get("reasoning_content"):
            self.reasoning.append(delta["reasoning_content"])
        if delta.get("refusal"):
            self.refusal.append(delta["refusal"])
        for tc in delta.get("tool_calls") or ():
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
        self._add_common(c)

    def add_text(self, c: dict[str, Any]) -> None:
        if c.get("text"):
            self.parts.append(c["text"])
        self._add_common(c)

    def _add_common(self, c: dict[str, Any]) -> None:
        if c.get("finish_reason"):
            self.finish = c["finish_reason"]
            # vLLM names the stop sequence that ended the text: Anthropic clients are told it.
            self.stop_reason = c.get("stop_reason")
        lp = c.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            self.logprobs = (self.logprobs or []) + lp["content"]
        elif isinstance(lp, dict) and isinstance(lp.get("tokens"), list):
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
        logprobs = {"content": self.logprobs, "refusal": None} if self.logprobs else None
        out = {
            "index": self.index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": self.finish or "stop",
        }
        if self.stop_reason is not None:
            out["stop_reason"] = self.stop_reason
        return out

    def text(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": "".join(self.parts),
            "logprobs": self.legacy,
            "finish_reason": self.finish or "stop",
        }


async def body_from_chunks(endpoint: Endpoint, batches: AsyncIterator[list[bytes]]) -> bytes:
    """Aggregate a chunk stream into the one JSON answer a non-streaming client expects."""
    head: dict[str, Any] | None = None
    choices: dict[int, _Choice] = {}
    usage: Any = None
    chat = endpoint is Endpoint.CHAT
    async for batch in batches:
        for payload in batch:
            c = _decode_obj(payload)
            if head is None:
                head = c
            if c.get("usage") is not None:
                usage = c["usage"]
            for ch in c.get("choices") or ():
                index = ch.get("index", 0)
                slot = choices.get(index)
                if slot is None:
                    slot = choices[index] = _Choice(index)
                if chat:
                    slot.add_chat(ch)
                else:
                    slot.add_text(ch)
    if head is None:
        raise BadGateway("The backend closed the stream without sending anything.")
    resp: dict[str, Any] = {
        "id": head.get("id", ""),
        "object": "chat.completion" if chat else "text_completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [(c.chat() if chat else c.text()) for _, c in sorted(choices.items())],
    }
    if head.get("system_fingerprint") is not None:
        resp["system_fingerprint"] = head["system_fingerprint"]
    if usage is not None:
        resp["usage"] = usage
    return _encode(resp)
