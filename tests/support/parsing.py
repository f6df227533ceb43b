"""Drive output parsers over every chunking of a text and fold their events into one result."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from airouter.output.events import CallArgs, CallStart, Event, OutputParser, Reasoning, Text

Factory = Callable[[], OutputParser]


@dataclass
class Parsed:
    """What a client would assemble from the events."""

    text: str = ""
    reasoning: str = ""
    calls: list[tuple[str, Any]] = field(default_factory=list)
    raw_args: list[str] = field(default_factory=list)


def fold(events: Sequence[Event], called: bool) -> Parsed:
    """Assemble events, checking the stream invariants on the way."""
    text: list[str] = []
    reasoning: list[str] = []
    names: list[str] = []
    args: list[list[str]] = []
    for ev in events:
        if isinstance(ev, Text):
            assert ev.text, "empty Text event"
            text.append(ev.text)
        elif isinstance(ev, Reasoning):
            assert ev.text, "empty Reasoning event"
            reasoning.append(ev.text)
        elif isinstance(ev, CallStart):
            assert ev.index == len(names), f"call index {ev.index} out of order"
            assert ev.name, "empty call name"
            if names:
                assert args[-1], "previous call got no arguments"
            names.append(ev.name)
            args.append([])
        else:
            assert isinstance(ev, CallArgs)
            assert ev.fragment, "empty CallArgs fragment"
            # Fragments belong to the latest call: calls never interleave.
            assert ev.index == len(names) - 1, f"args for call {ev.index} out of order"
            args[-1].append(ev.fragment)
    assert called == bool(names)
    raw = ["".join(a) for a in args]
    calls = []
    for name, a in zip(names, raw, strict=True):
        value = json.loads(a)  # strict: no raw control characters either
        assert isinstance(value, dict), a
        calls.append((name, value))
    return Parsed("".join(text), "".join(reasoning), calls, raw)


def run(factory: Factory, pieces: Sequence[str]) -> Parsed:
    parser = factory()
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    return fold(events, parser.called)


def chunkings(text: str, pairs_max: int = 48) -> Iterator[list[str]]:
    """Whole, char by char (with empty pieces between), every split, every pair of splits."""
    n = len(text)
    yield [text]
    yield list(text)
    yield [part for ch in text for part in ("", ch)] + [""]
    for i in range(n + 1):
        yield [text[:i], text[i:]]
    if n <= pairs_max:
        for i in range(n + 1):
            for j in range(i, n + 1):
                yield [text[:i], text[i:j], text[j:]]
    else:
        # Every pair is too many for long inputs: every split with a second cut nearby.
        for i in range(n + 1):
            for d in (1, 2, 3, 5, 8, 13):
                yield [text[:i], text[i : i + d], text[i + d :]]


def split_at(text: str, points: Sequence[int]) -> list[str]:
    cuts = sorted({min(max(p, 0), len(text)) for p in points})
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def check_all_splits(factory: Factory, text: str) -> Parsed:
    """Parse ``text`` under every chunking; all must agree. Returns the common result."""
    whole = run(factory, [text])
    for pieces in chunkings(text):
        got = run(factory, pieces)
        assert got.text == whole.text, pieces
        assert got.reasoning == whole.reasoning, pieces
        assert got.calls == whole.calls, pieces
        assert got.raw_args == whole.raw_args, pieces
    return whole
