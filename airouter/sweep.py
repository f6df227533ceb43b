"""A deadline per request without a timer per request: entries in a set, looked at every
`tick` seconds by one timer, armed while any entry is left. A set entry and its removal cost a
fraction of a timer's start and cancel; a deadline fires up to one tick late."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Sweep(Generic[T]):
    """`fire(entry)` for each entry `due(entry, now)` says is due (it is left in the set:
    `fire` discards it when it is done with it)."""

    __slots__ = ("tick", "entries", "discard", "_due", "_fire", "_timer", "_loop")

    def __init__(
        self, tick: float, due: Callable[[T, float], bool], fire: Callable[[T], None]
    ) -> None:
        self.tick = tick
        self.entries: set[T] = set()
        # Removal is the set's own method: no Python frame per request on the hot path.
        self.discard: Callable[[T], None] = self.entries.discard
        self._due = due
        self._fire = fire
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, entry: T, loop: asyncio.AbstractEventLoop) -> None:
        self.entries.add(entry)
        if self._timer is None or self._loop is not loop:  # a new loop: the old timer is gone
            self._loop = loop
            self._timer = loop.call_later(self.tick, self._run)

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        due = self._due
        for entry in [e for e in self.entries if due(e, now)]:
            self._fire(entry)
        self._timer = loop.call_later(self.tick, self._run) if self.entries else None
