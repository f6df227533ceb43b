"""Events of a parsed model output (answer text, reasoning, tool calls) and the parser interface.

A parser turns the generated text stream into these events, incrementally and without I/O:
``feed`` handles only the new text, ``finish`` flushes what was held back at end of stream.
Invariants every parser keeps, whatever the chunking of its input:

* the events are the same (up to how ``Text``/``Reasoning``/``CallArgs`` runs are split);
* joined ``Text`` is the model's text with every recognised call's markup removed;
* the ``CallArgs`` fragments of one call join to the JSON text of an object;
* ``CallStart`` indices count 0, 1, 2, ... and a call's ``CallArgs`` follow its ``CallStart``;
* no input makes a parser raise: what is not a well-formed call stays text.

The parsers by name: parsers.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CallArgs",
    "CallStart",
    "Event",
    "OutputParser",
    "Reasoning",
    "Text",
    "chain",
]


@dataclass(slots=True, frozen=True)
class Text:
    """Plain answer content."""

    text: str


@dataclass(slots=True, frozen=True)
class Reasoning:
    """Thinking text, sent as ``reasoning_content``."""

    text: str


@dataclass(slots=True, frozen=True)
class CallStart:
    """A new tool call; ``index`` counts calls of one output from 0."""

    index: int
    name: str


@dataclass(slots=True, frozen=True)
class CallArgs:
    """A piece of call ``index``'s ``function.arguments`` JSON text."""

    index: int
    fragment: str


Event = Text | Reasoning | CallStart | CallArgs


class OutputParser(Protocol):
    """Sans-IO parser of one generated output."""

    def feed(self, text: str) -> list[Event]:
        """Events made certain by ``text``; work is proportional to ``len(text)``."""
        ...

    def finish(self) -> list[Event]:
        """End of stream: flush everything held back. Call once, after the last ``feed``."""
        ...

    @property
    def called(self) -> bool:
        """Whether at least one ``CallStart`` was emitted."""
        ...


class _Chain:
    """``first``'s ``Text`` goes through ``second``; everything else passes as is."""

    __slots__ = ("_first", "_second")

    def __init__(self, first: OutputParser, second: OutputParser) -> None:
        self._first = first
        self._second = second

    def _route(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if type(event) is Text:
                out += self._second.feed(event.text)
            else:
                out.append(event)
        return out

    def feed(self, text: str) -> list[Event]:
        return self._route(self._first.feed(text))

    def finish(self) -> list[Event]:
        out = self._route(self._first.finish())
        out += self._second.finish()
        return out

    @property
    def called(self) -> bool:
        return self._first.called or self._second.called


def chain(first: OutputParser, second: OutputParser) -> OutputParser:
    """Parse with ``first`` (reasoning), then feed its ``Text`` to ``second`` (tool calls)."""
    return _Chain(first, second)
