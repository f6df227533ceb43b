"""Noticing that the client went away while its answer is being made."""

from __future__ import annotations

import asyncio

from airouter.rsgi import HTTPProtocol

# A watcher is a future waiting on the connection: tens of microseconds to start and cancel, a
# fifth of a fast request's cost. Most answers that end this soon never need one; a client
# that leaves earlier is noticed this much later, or when a send to it fails.
WATCH_AFTER_S = 0.1


class _Sweep:
    """Requests not yet watched, looked at every WATCH_AFTER_S / 2: a set entry per request
    instead of a timer per request."""

    def __init__(self) -> None:
        self.waiting: set[DisconnectWatch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, w: DisconnectWatch, loop: asyncio.AbstractEventLoop) -> None:
        self.waiting.add(w)
        if self._timer is None or self._loop is not loop:  # a new loop: the old timer is gone
            self._loop = loop
            self._timer = loop.call_later(WATCH_AFTER_S / 2, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() - WATCH_AFTER_S
        ready = [w for w in self.waiting if w.since <= due]
        for w in ready:
            self.waiting.discard(w)
            w.start()
        self._timer = loop.call_later(WATCH_AFTER_S / 2, self._sweep) if self.waiting else None


_SWEEP = _Sweep()


class DisconnectWatch:
    """Cancels the handler's task when the client goes away, so backend work stops at once."""

    __slots__ = ("_task", "_watcher", "_active", "_proto", "since")

    def __init__(self, proto: HTTPProtocol, task: asyncio.Task[object]) -> None:
        self._task = task
        self._active = True
        self._proto = proto
        self._watcher: asyncio.Future[None] | None = None
        loop = task.get_loop()
        self.since = loop.time()
        _SWEEP.add(self, loop)

    def start(self) -> None:
        if self._active:
            self._watcher = asyncio.ensure_future(self._proto.client_disconnect())
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
        if self._active:
            self._active = False
            _SWEEP.waiting.discard(self)
        if self._watcher is not None:
            self._watcher.cancel()
