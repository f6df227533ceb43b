"""Normalise OpenAI chat messages into the plain dicts chat templates expect."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from airouter.templates.errors import PromptError

ROLES = ("system", "developer", "user", "assistant", "tool")
TEXT_PART_SEPARATOR = "\n"
TOOL_RESULT_SEPARATOR = "\n\n"


def normalise_messages(
    messages: Sequence[Mapping[str, Any]], *, tool_call_id_length: int | None = None
) -> list[dict[str, Any]]:
    """Validated shallow copies of ``messages`` ready for a chat template.

    - role ``developer`` becomes ``system``; other roles outside ROLES are rejected;
    - ``content`` becomes a string: text parts are joined with "\\n", any non-text part
      (image_url, input_audio, file, ...) is rejected; a null assistant content becomes "";
    - assistant ``tool_calls`` get their JSON-string ``arguments`` decoded to objects
      (HF templates expect objects); an empty or null ``tool_calls`` is dropped.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise PromptError("messages must be a list of message objects")
    if not messages:
        raise PromptError("messages must contain at least one message")
    return [_message(i, raw, tool_call_id_length) for i, raw in enumerate(messages)]


def _message(index: int, raw: object, id_length: int | None) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(raw, Mapping):
        raise PromptError(f"{where} must be an object")
    role = raw.get("role")
    if role not in ROLES:
        raise PromptError(f"{where}.role {role!r} is not one of: {', '.join(ROLES)}")
    message = dict(raw)
    message["role"] = "system" if role == "developer" else role
    message["content"] = _content(where, role, raw.get("content"))
    calls = raw.get("tool_calls")
    message.pop("tool_calls", None)
    if calls and role == "assistant":
        if not isinstance(calls, Sequence) or isinstance(calls, str | bytes):
            raise PromptError(f"{where}.tool_calls must be a list")
        message["tool_calls"] = [
            _tool_call(f"{where}.tool_calls[{j}]", call, id_length) for j, call in enumerate(calls)
        ]
    call_id = raw.get("tool_call_id")
    if id_length is not None and isinstance(call_id, str):
        message["tool_call_id"] = _short_id(call_id, id_length)
    return message


def _content(where: str, role: str, content: object) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        if role == "assistant":
            return ""
        raise PromptError(f"{where}.content is required for role {role!r}")
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        return TEXT_PART_SEPARATOR.join(
            _text_part(f"{where}.content[{j}]", part) for j, part in enumerate(content)
        )
    raise PromptError(f"{where}.content must be a string or a list of content parts")


def _text_part(where: str, part: object) -> str:
    if not isinstance(part, Mapping):
        raise PromptError(f"{where} must be a content part object")
    kind = part.get("type")
    # assistant turns may carry a refusal part in place of text
    key = "refusal" if kind == "refusal" else "text"
    if kind not in ("text", "refusal"):
        raise PromptError(f"{where} has type {kind!r}; this model accepts text content only")
    text = part.get(key)
    if not isinstance(text, str):
        raise PromptError(f"{where}.{key} must be a string")
    return text


def _tool_call(where: str, call: object, id_length: int | None) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise PromptError(f"{where} must be an object")
    function = call.get("function")
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise PromptError(f"{where}.function.name must be a string")
    result = dict(call)
    result["function"] = {**function, "arguments": _arguments(function.get("arguments"))}
    call_id = call.get("id")
    if id_length is not None and isinstance(call_id, str):
        result["id"] = _short_id(call_id, id_length)
    return result


def _arguments(arguments: object) -> object:
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except ValueError:
        # a model's malformed arguments echoed back in history: keep them verbatim
        return arguments


def _short_id(call_id: str, length: int) -> str:
    # same rule as vLLM for Mistral: the model was trained on 9-character alphanumeric ids
    return "".join(ch for ch in call_id if ch.isalnum())[-length:]


def fold_tool_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite tool traffic as plain turns, for formats with no tool syntax of their own.

    A run of consecutive ``tool`` messages becomes one ``user`` turn (results joined by a
    blank line); an assistant turn's ``tool_calls`` are appended to its content as one
    ``{"name": ..., "arguments": ...}`` JSON object per line.
    """
    folded: list[dict[str, Any]] = []
    previous_was_tool = False
    for message in messages:
        if message["role"] == "tool":
            if previous_was_tool:
                last = folded[-1]
                last["content"] = last["content"] + TOOL_RESULT_SEPARATOR + message["content"]
            else:
                folded.append({"role": "user", "content": message["content"]})
            previous_was_tool = True
            continue
        previous_was_tool = False
        calls = message.get("tool_calls")
        if calls:
            message = {key: value for key, value in message.items() if key != "tool_calls"}
            message["content"] = _with_calls(message["content"], calls)
        folded.append(message)
    return folded


def _with_calls(content: str, calls: list[dict[str, Any]]) -> str:
    lines = [
        json.dumps(
            {"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
            ensure_ascii=False,
        )
        for call in calls
    ]
    return "\n".join([content, *lines] if content else lines)
