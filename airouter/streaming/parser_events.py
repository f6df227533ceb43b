"""What an output parser reports: answer text, reasoning text, and tool calls in pieces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Text:
    text: str


@dataclass(slots=True, frozen=True)
class Reasoning:
    text: str


@dataclass(slots=True, frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(slots=True, frozen=True)
class CallArgs:
    index: int
    fragment: str


Event = Text | Reasoning | CallStart | CallArgs
