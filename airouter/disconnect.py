"""Noticing that the client went away while its answer is being made."""

from __future__ import annotations

import asyncio

from airouter.asgi import Receive


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class DisconnectWatch:
    """Cancels the handler's task when the client goes away, so backend work stops at once."""

    __slots__ = ("_task", "_watcher", "_active")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._active = True
        self._watcher = asyncio.ensure_future(_until_disconnect(receive))
        self._watcher.add_done_callback(self._fire)

    def _fire(self, w: asyncio.Future[None]) -> None:
        if w.cancelled():
            return
        if w.exception() is not None:  # receive() itself failed: retrieved, not a disconnect
            return
        if self._active:
            self._task.cancel()

    @property
    def gone(self) -> bool:
        w = self._watcher
        return w.done() and not w.cancelled() and w.exception() is None

    def stop(self) -> None:
        self._active = False
        self._watcher.cancel()
