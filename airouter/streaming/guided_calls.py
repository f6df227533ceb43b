"""Tool calls from guided output: when guided decoding forces a call, the model writes plain JSON
(the arguments of the named function, or an array of calls) instead of its own call markup."""

from __future__ import annotations

import json
from typing import Any

from airouter.streaming.parsed import CallArgs, CallStart, Event, Text


def named_call_schema(parameters: Any) -> dict[str, Any]:
    """The guide for `tool_choice: {"type": "function", ...}`: the function's arguments."""
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object"}


def call_array_schema(tools: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """The guide for `tool_choice: "required"`: [{"name": ..., "parameters": {...}}, ...]."""
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t["function"]["name"]]},
                "parameters": named_call_schema(t["function"].get("parameters")),
            },
            "required": ["name", "parameters"],
        }
        for t in tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


class NamedCall:
    """Everything the model writes is the arguments of one call to `name`, streamed as it comes."""

    __slots__ = ("name", "called")

    def __init__(self, name: str) -> None:
        self.name = name
        self.called = False

    def feed(self, text: str) -> list[Event]:
        if self.called:
            return [CallArgs(0, text)]
        text = text.lstrip()
        if not text:
            return []
        self.called = True
        return [CallStart(0, self.name), CallArgs(0, text)]

    def finish(self) -> list[Event]:
        return []


class CallArray:
    """The model writes a JSON array of calls; it is read whole when the answer ends (a cut or
    malformed array is passed on as text)."""

    __slots__ = ("_parts", "called")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.called = False

    def feed(self, text: str) -> list[Event]:
        self._parts.append(text)
        return []

    def finish(self) -> list[Event]:
        text = "".join(self._parts)
        self._parts = []
        try:
            calls = json.loads(text)
        except ValueError:
            return [Text(text)] if text else []
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls
        ):
            return [Text(text)]
        out: list[Event] = []
        for i, c in enumerate(calls):
            args = c.get("parameters", c.get("arguments", {}))
            out.append(CallStart(i, c["name"]))
            out.append(CallArgs(i, json.dumps(args, ensure_ascii=False)))
        self.called = bool(out)
        return out
