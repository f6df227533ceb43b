"""Where a node's concurrency slots are counted when they must hold beyond this process: the
interface a pool calls, implemented by the limits stores (the main process's counters for the
workers of one replica, Redis for every replica)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

# What a store answers to a request for a slot.
FULL, GRANTED, TIMEOUT = 0, 1, -1


def slot_key(backend: str, url: str, label: str) -> str:
    """A node's name in a store: the same in every worker and replica with the same config,
    readable, and without the URL's credentials (a digest of the URL keeps two nodes on one
    host:port apart)."""
    return f"{backend}:{label}:{hashlib.sha1(url.encode()).hexdigest()[:8]}"


class SlotStore(ABC):
    """Slots of nodes shared with other workers or replicas. A taken slot is a lease: given
    back by `give`, or freed by the store when its holder dies."""

    allow_on_failure = True  # limits_on_redis_failure: "allow" counts in this process instead

    async def start(self) -> None:
        """Connect; called in the event loop that will use the store."""

    async def aclose(self) -> None:
        """Disconnect."""

    @abstractmethod
    async def take(
        self, key: str, limit: int, max_queue: int, queue_timeout: float
    ) -> tuple[int, str] | None:
        """A slot of `key` when fewer than `limit` are taken, else wait in its queue (at most
        `max_queue` waiting, across every holder of the store) up to `queue_timeout` seconds.
        Answers (GRANTED, lease), (FULL, "") or (TIMEOUT, ""), or None when the store cannot
        be reached. A cancelled call leaves nothing taken and nothing queued."""

    @abstractmethod
    def give(self, key: str, lease: str) -> None:
        """Give a slot back, without waiting for the store."""
