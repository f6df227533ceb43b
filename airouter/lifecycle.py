"""The router's live state and the requests it is serving, for a drain on shutdown."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airouter.state import State


class Holder:
    """The live State, and the requests being served (ended cleanly if a shutdown's grace
    period runs out)."""

    state: State

    def __init__(self) -> None:
        self.draining = False
        # The worker is being replaced: answers carry `Connection: close`.
        self.closing = False
        self.tasks: set[asyncio.Task[Any]] = set()

    def end_all(self) -> None:
        """Grace period over: in-flight requests end now, each with a clean error."""
        self.draining = True
        for t in list(self.tasks):
            t.cancel()
