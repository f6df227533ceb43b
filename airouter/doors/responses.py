"""OpenAI Responses API requests -> chat completion request bodies (stateless).

`store` is accepted and ignored: nothing is kept, so `previous_response_id` cannot be served
and is refused. Built-in tools, background runs and other stateful features are refused with
the offending `param`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    "model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens",
    "temperature", "top_p", "stream", "reasoning", "store", "metadata", "user",
    "parallel_tool_calls", "previous_response_id", "background", "truncation", "include",
    "stream_options", "service_tier", "safety_identifier", "prompt_cache_key",
})
_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_TOOL_CHOICES = frozenset({"auto", "none", "required"})


@dataclass(slots=True)
class ResponsesRequest:
    """What a Responses answer echoes back about its request."""

    model: str
    stream: bool
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    reasoning: dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    store: bool = False
    user: str | None = None


def _text_parts(content: Any, param: str, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(array(content, param)):
        p = f"{param}[{j}]"
        part = obj(part, p)
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            text = string(part.get("text"), f"{p}.text", required=True)
            parts.append({"type": "text", "text": text})
        elif kind == "refusal" and role == "assistant":
            parts.append({"type": "text", "text": string(part.get("refusal"), f"{p}.refusal",
                                                        required=True)})
        elif kind == "input_image":
            url = string(part.get("image_url"), f"{p}.image_url")
            if url is None:
                raise unsupported(f"{p}.file_id", "Images are accepted only by 'image_url'.")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise unsupported(f"{p}.type", f"Content parts of type {kind!r} are not supported.")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _messages(raw: Any, instructions: str | None) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    if instructions:
        msgs.append({"role": "system", "content": instructions})
    if isinstance(raw, str):
        msgs.append({"role": "user", "content": raw})
        return msgs
    items = array(raw, "input")
    if not items:
        raise invalid("input", "expected a string or a non-empty array of items.")
    for i, item in enumerate(items):
        p = f"input[{i}]"
        item = obj(item, p)
        kind = item.get("type", "message")
        if kind == "message":
            role = string(item.get("role"), f"{p}.role", required=True)
            if role not in _ROLES:
                raise invalid(f"{p}.role", "expected user, system, developer or assistant.")
            content = _text_parts(item.get("content"), f"{p}.content", role)
            msgs.append({"role": _ROLES[role], "content": content})
        elif kind == "function_call":
            call = {
                "id": string(item.get("call_id"), f"{p}.call_id", required=True),
                "type": "function",
                "function": {
                    "name": string(item.get("name"), f"{p}.name", required=True),
                    "arguments": string(item.get("arguments"), f"{p}.arguments", required=True),
                },
            }
            last = msgs[-1] if msgs else None
            if last is not None and last["role"] == "assistant" and isinstance(
                last.get("content"), (str, type(None))
            ):
                last.setdefault("tool_calls", []).append(call)
            else:
                # "" rather than null: some servers (llama-cpp-python) insist on a string.
                msgs.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                output = _text_parts(output, f"{p}.output", "user")
            msgs.append({
                "role": "tool",
                "tool_call_id": string(item.get("call_id"), f"{p}.call_id", required=True),
                "content": output,
            })
        elif kind == "reasoning":
            # Earlier reasoning is context for the model that produced it, not chat input.
            continue
        else:
            raise unsupported(f"{p}.type", f"Input items of type {kind!r} are not supported.")
    return msgs


def _tools(raw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    echo: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    for i, tool in enumerate(array(raw, "tools")):
        p = f"tools[{i}]"
        tool = obj(tool, p)
        if tool.get("type") != "function":
            raise unsupported(f"{p}.type", f"Tools of type {tool.get('type')!r} are not "
                              "supported; only 'function' tools are.")
        name = string(tool.get("name"), f"{p}.name", required=True)
        fn: dict[str, Any] = {"name": name}
        params = tool.get("parameters")
        if params is not None:
            fn["parameters"] = obj(params, f"{p}.parameters")
        if tool.get("description") is not None:
            fn["description"] = string(tool["description"], f"{p}.description")
        if tool.get("strict") is not None:
            fn["strict"] = boolean(tool["strict"], f"{p}.strict")
        chat.append({"type": "function", "function": fn})
        echo.append({"type": "function", "name": name, "description": fn.get("description"),
                     "parameters": fn.get("parameters"), "strict": fn.get("strict", True)})
    return chat, echo


def _tool_choice(raw: Any) -> Any:
    if isinstance(raw, str):
        if raw not in _TOOL_CHOICES:
            raise invalid("tool_choice", "expected auto, none, required or a function.")
        return raw
    choice = obj(raw, "tool_choice")
    if choice.get("type") != "function":
        raise unsupported("tool_choice.type", "Only function tool choices are supported.")
    name = string(choice.get("name"), "tool_choice.name", required=True)
    return {"type": "function", "function": {"name": name}}


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format")
    if fmt is None:
        return None
    fmt = obj(fmt, "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema: dict[str, Any] = {
            "name": string(fmt.get("name"), "text.format.name", required=True),
            "schema": obj(fmt.get("schema"), "text.format.schema"),
        }
        for k in ("description", "strict"):
            if fmt.get(k) is not None:
                schema[k] = fmt[k]
        return {"type": "json_schema", "json_schema": schema}
    raise invalid("text.format.type", "expected text, json_object or json_schema.")


def _refuse_stateful(body: dict[str, Any]) -> None:
    if body.get("previous_response_id") is not None:
        raise unsupported("previous_response_id", "This router keeps no responses: send the "
                          "whole conversation in 'input' instead of 'previous_response_id'.")
    if boolean(body.get("background"), "background"):
        raise unsupported("background", "Background responses are not supported.")
    if body.get("truncation") not in (None, "disabled"):
        raise unsupported("truncation", "Only truncation 'disabled' is supported.")
    include = body.get("include")
    if include:
        raise unsupported("include", "No additional output data can be included.")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise unsupported("service_tier", "Only the default service tier is available.")


def to_chat(body: dict[str, Any]) -> tuple[dict[str, Any], ResponsesRequest]:
    """A decoded Responses request -> (chat request body, what the answer echoes)."""
    check_known(body, _KNOWN)
    _refuse_stateful(body)
    model = string(body.get("model"), "model", required=True)
    assert model is not None
    if "input" not in body:
        raise missing("input")
    req = ResponsesRequest(model=model, stream=bool(boolean(body.get("stream"), "stream")))
    req.instructions = string(body.get("instructions"), "instructions")
    req.max_output_tokens = integer(body.get("max_output_tokens"), "max_output_tokens")
    req.temperature = number(body.get("temperature"), "temperature", 0, 2)
    req.top_p = number(body.get("top_p"), "top_p", 0, 1)
    req.store = bool(boolean(body.get("store"), "store"))
    req.user = string(body.get("user"), "user")
    if body.get("metadata") is not None:
        req.metadata = obj(body["metadata"], "metadata")
    chat: dict[str, Any] = {
        "model": model,
        "messages": _messages(body["input"], req.instructions),
    }
    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    for k, v in (("max_tokens", req.max_output_tokens), ("temperature", req.temperature),
                 ("top_p", req.top_p), ("user", req.user)):
        if v is not None:
            chat[k] = v
    if body.get("tools"):
        chat["tools"], req.tools = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
        req.tool_choice = body["tool_choice"]
    ptc = boolean(body.get("parallel_tool_calls"), "parallel_tool_calls")
    if ptc is not None:
        req.parallel_tool_calls = ptc
        if "tools" in chat:
            chat["parallel_tool_calls"] = ptc
    if body.get("text") is not None:
        text = obj(body["text"], "text")
        check_known(text, frozenset({"format", "verbosity"}), "text")
        if text.get("verbosity") not in (None, "medium"):
            raise unsupported("text.verbosity", "Only the default verbosity is supported.")
        rf = _response_format(text)
        if rf is not None:
            chat["response_format"] = rf
            req.text = {"format": text["format"]}
    if body.get("reasoning") is not None:
        reasoning = obj(body["reasoning"], "reasoning")
        check_known(reasoning, frozenset({"effort", "summary", "generate_summary"}), "reasoning")
        effort = string(reasoning.get("effort"), "reasoning.effort")
        req.reasoning = {"effort": effort, "summary": reasoning.get("summary")}
        if effort is not None:
            chat["reasoning_effort"] = effort
    return chat, req
