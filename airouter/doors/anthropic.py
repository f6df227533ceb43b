"""Anthropic Messages API requests -> chat completion request bodies, and Anthropic's error shape.

`metadata` is accepted and ignored. `top_k` passes on to the backend, which refuses it if
it cannot honour it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from airouter.errors import RouterError
from airouter.protocol.fields import (
    array,
    boolean,
    check_known,
    integer,
    invalid,
    missing,
    number,
    obj,
    string,
    unsupported,
)

_KNOWN = frozenset({
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
    "top_k", "stream", "metadata", "tools", "tool_choice", "thinking", "service_tier",
})
_COUNT_KNOWN = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})
_THINKING_KNOWN = frozenset({"type", "budget_tokens", "display"})

_encode = msgspec.json.Encoder().encode

# Anthropic's error type for each HTTP status the router answers with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_json(err: RouterError) -> bytes:
    """`{"type":"error","error":{"type":...,"message":...}}` for `err`."""
    message = f"{err.param}: {err.message}" if err.param and err.param not in err.message \
        else err.message
    return _encode({"type": "error", "error": {"type": error_type(err.status),
                                               "message": message}})


@dataclass(slots=True)
class MessagesRequest:
    """What an Anthropic answer needs to know about its request."""

    model: str
    stream: bool
    stop_sequences: list[str] = field(default_factory=list)
    # How the model's reasoning is shown: None (no thinking blocks), "summarized" (as it
    # is) or "omitted" (empty thinking blocks).
    thinking: str | None = None


def _text_of(blocks: Any, param: str) -> str:
    if isinstance(blocks, str):
        return blocks
    out = []
    for j, b in enumerate(array(blocks, param)):
        b = obj(b, f"{param}[{j}]")
        if b.get("type") != "text":
            raise unsupported(f"{param}[{j}].type", "Only text blocks are supported here.")
        out.append(string(b.get("text"), f"{param}[{j}].text", required=True) or "")
    return "".join(out)


def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    src = obj(block.get("source"), f"{param}.source")
    if src.get("type") == "base64":
        media = string(src.get("media_type"), f"{param}.source.media_type", required=True)
        data = string(src.get("data"), f"{param}.source.data", required=True)
        url = f"data:{media};base64,{data}"
    elif src.get("type") == "url":
        url = string(src.get("url"), f"{param}.source.url", required=True) or ""
    else:
        raise unsupported(f"{param}.source.type", "Images are accepted as base64 or url.")
    return {"type": "image_url", "image_url": {"url": url}}


def _user(content: list[Any], param: str) -> list[dict[str, Any]]:
    """One user turn: tool results first (as chat tool messages), then what the user says."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        p = f"{param}[{j}]"
        b = obj(b, p)
        kind = b.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": string(b.get("text"), f"{p}.text",
                                                         required=True)})
        elif kind == "image":
            parts.append(_image(b, p))
        elif kind == "tool_result":
            result = b.get("content", "")
            text = _text_of(result, f"{p}.content") if result is not None else ""
            if boolean(b.get("is_error"), f"{p}.is_error"):
                text = f"Error: {text}"
            tools.append({
                "role": "tool",
                "tool_call_id": string(b.get("tool_use_id"), f"{p}.tool_use_id", required=True),
                "content": text,
            })
        else:
            raise unsupported(f"{p}.type", f"User content blocks of type {kind!r} are not "
                              "supported.")
    if parts:
        text_only = all(x["type"] == "text" for x in parts)
        tools.append({"role": "user", "content": "".join(x["text"] for x in parts)
                      if text_only else parts})
    return tools


def _assistant(content: list[Any], param: str) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        p = f"{param}[{j}]"
        b = obj(b, p)
        kind = b.get("type")
        if kind == "text":
            text.append(string(b.get("text"), f"{p}.text", required=True) or "")
        elif kind == "tool_use":
            calls.append({
                "id": string(b.get("id"), f"{p}.id", required=True),
                "type": "function",
                "function": {
                    "name": string(b.get("name"), f"{p}.name", required=True),
                    "arguments": _encode(obj(b.get("input"), f"{p}.input")).decode(),
                },
            })
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning is not chat input
        else:
            raise unsupported(f"{p}.type", f"Assistant content blocks of type {kind!r} are "
                              "not supported.")
    # "" rather than null beside tool calls: some servers (llama-cpp-python) insist on a string.
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _text_of(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    if "messages" not in body:
        raise missing("messages")
    msgs = array(body["messages"], "messages")
    if not msgs:
        raise invalid("messages", "expected at least one message.")
    for i, m in enumerate(msgs):
        p = f"messages[{i}]"
        m = obj(m, p)
        role = m.get("role")
        content = m.get("content")
        if role not in ("user", "assistant"):
            raise invalid(f"{p}.role", "expected user or assistant.")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        blocks = array(content, f"{p}.content")
        if role == "user":
            out.extend(_user(blocks, f"{p}.content"))
        else:
            out.append(_assistant(blocks, f"{p}.content"))
    return out


def _tools(raw: Any) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(array(raw, "tools")):
        p = f"tools[{i}]"
        t = obj(t, p)
        if t.get("type") not in (None, "custom"):
            raise unsupported(f"{p}.type", f"Tools of type {t.get('type')!r} are not "
                              "supported; only client tools with an input_schema are.")
        fn: dict[str, Any] = {
            "name": string(t.get("name"), f"{p}.name", required=True),
            "parameters": obj(t.get("input_schema"), f"{p}.input_schema"),
        }
        if t.get("description") is not None:
            fn["description"] = string(t["description"], f"{p}.description")
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(raw: Any, chat: dict[str, Any]) -> None:
    choice = obj(raw, "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool":
        name = string(choice.get("name"), "tool_choice.name", required=True)
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise invalid("tool_choice.type", "expected auto, any, tool or none.")
    if boolean(choice.get("disable_parallel_tool_use"), "tool_choice.disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def _thinking(raw: Any, max_tokens: int | None) -> str | None:
    """Thinking blocks are part of the answer only when the client turned thinking on, as
    with Anthropic's own models; a backend's reasoning is otherwise left out."""
    if raw is None:
        return None
    t = obj(raw, "thinking")
    check_known(t, _THINKING_KNOWN, "thinking")
    kind = t.get("type")
    if kind == "disabled":
        return None
    if kind == "enabled":
        budget = integer(t.get("budget_tokens"), "thinking.budget_tokens", 1024)
        if budget is None:
            raise missing("thinking.budget_tokens")
        if max_tokens is not None and budget >= max_tokens:
            raise invalid("thinking.budget_tokens", "must be less than max_tokens.")
    elif kind != "adaptive":
        raise invalid("thinking.type", "expected enabled, disabled or adaptive.")
    display = t.get("display")
    if display is None:
        return "summarized"
    if display not in ("summarized", "omitted"):
        raise invalid("thinking.display", "expected summarized or omitted.")
    return str(display)


def to_chat(body: dict[str, Any], *, count_only: bool = False) -> tuple[dict[str, Any],
                                                                       MessagesRequest]:
    """A decoded Messages request -> (chat request body, what the answer needs to know)."""
    check_known(body, _COUNT_KNOWN if count_only else _KNOWN)
    model = string(body.get("model"), "model", required=True)
    assert model is not None
    req = MessagesRequest(model=model, stream=bool(boolean(body.get("stream"), "stream")))
    max_tokens = integer(body.get("max_tokens"), "max_tokens")
    if max_tokens is None and not count_only:
        raise missing("max_tokens")
    chat: dict[str, Any] = {"model": model, "messages": _messages(body)}
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if body.get("stop_sequences") is not None:
        stops = array(body["stop_sequences"], "stop_sequences")
        for i, s in enumerate(stops):
            if not isinstance(s, str) or not s:
                raise invalid(f"stop_sequences[{i}]", "expected a non-empty string.")
        if stops:
            req.stop_sequences = stops
            chat["stop"] = stops
    for k, lo, hi in (("temperature", 0, 1), ("top_p", 0, 1)):
        v = number(body.get(k), k, lo, hi)
        if v is not None:
            chat[k] = v
    top_k = integer(body.get("top_k"), "top_k", 0)
    if top_k is not None:
        chat["top_k"] = top_k
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    req.thinking = _thinking(body.get("thinking"), max_tokens)
    if body.get("service_tier") not in (None, "auto", "standard_only"):
        raise invalid("service_tier", "expected auto or standard_only.")
    return chat, req
