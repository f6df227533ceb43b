"""Tool calls from guided output: when guided decoding forces a call, the model writes plain JSON
(the arguments of the named function, or an array of calls) instead of its own call markup."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airouter.output.events import CallArgs, CallStart, Event, Text
from airouter.output.tools.mistral import MistralParser

_MARK = "[TOOL_CALLS]"


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
    """The model writes a JSON array of calls: the shape of Mistral's call list, so its parser
    reads it as it comes, primed with its `[TOOL_CALLS]` marker (which never reaches the
    client, even when a cut array falls back to text)."""

    __slots__ = ("_parser", "_lead")

    def __init__(self, names: Sequence[str]) -> None:
        self._parser = MistralParser(names)
        self._parser.feed(_MARK)
        self._lead = _MARK

    @property
    def called(self) -> bool:
        return self._parser.called

    def feed(self, text: str) -> list[Event]:
        return self._unmarked(self._parser.feed(text))

    def finish(self) -> list[Event]:
        return self._unmarked(self._parser.finish())

    def _unmarked(self, events: list[Event]) -> list[Event]:
        if not self._lead:
            return events
        out: list[Event] = []
        for ev in events:
            if isinstance(ev, Text) and self._lead:
                lead, text = self._lead, ev.text
                n = len(lead) if text.startswith(lead) else len(text)
                if not lead.startswith(text[:n]):
                    n = 0
                self._lead = lead[n:] if n else ""
                if text[n:]:
                    out.append(Text(text[n:]))
                continue
            self._lead = ""
            out.append(ev)
        return out
