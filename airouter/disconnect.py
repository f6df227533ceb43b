"""Noticing that the client went away while its answer is being made."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from airouter.sweep import Sweep

# A watcher is a future waiting on the connection: tens of microseconds to start and cancel, a
# fifth of a fast request's cost. Most answers that end this soon never need one; a client
# that leaves earlier is noticed this much later, or when a send to it fails.
WATCH_AFTER_S = 0.1


def _due(w: DisconnectWatch, now: float) -> bool:
    return now - w.since >= WATCH_AFTER_S


def _start(w: DisconnectWatch) -> None:
    _SWEEP.discard(w)
    w.start()


# Requests not yet watched, looked at every WATCH_AFTER_S / 2.
_SWEEP: Sweep[DisconnectWatch] = Sweep(WATCH_AFTER_S / 2, _due, _start)


class Watched(Protocol):
    """The request's exchange, as far as the watch needs it."""

    def client_disconnect(self) -> Awaitable[None]: ...


class DisconnectWatch:
    """Cancels the handler's task when the client goes away, so backend work stops at once."""

    __slots__ = ("_task", "_watcher", "_active", "_x", "since")

    def __init__(self, x: Watched, task: asyncio.Task[object]) -> None:
        self._task = task
        self._active = True
        self._x: Watched | None = x
        self._watcher: asyncio.Future[None] | None = None
        loop = task.get_loop()
        self.since = loop.time()
        _SWEEP.add(self, loop)

    def start(self) -> None:
        if self._active and self._x is not None:
            self._watcher = asyncio.ensure_future(self._x.client_disconnect())
            self._watcher.add_done_callback(self._fire)

    def _fire(self, w: asyncio.Future[None]) -> None:
        if w.cancelled():
            return
        if w.exception() is not None:  # the wait itself failed: retrieved, not a disconnect
            return
        if self._active:
            self._task.cancel()

    @property
    def gone(self) -> bool:
        w = self._watcher
        return w is not None and w.done() and not w.cancelled() and w.exception() is None

    def stop(self) -> None:
        # The exchange refers to its watch: let go of it, so the two are freed when the request
        # ends, not at the next collection.
        self._x = None
        if self._active:
            self._active = False
            _SWEEP.discard(self)
        w = self._watcher
        if w is not None:
            w.cancel()
            w.remove_done_callback(self._fire)  # the future refers to the watch no more
