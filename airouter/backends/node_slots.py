"""Where a node's concurrency slots are counted when they must hold beyond this process: the
interface a pool calls, implemented by the limits stores (the main process's counters for the
workers of one replica, Redis for every replica)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

from airouter.errors import RateLimited, RouterError, ServiceUnavailable
from airouter.fairness.claim import NOBODY, Claim

# What a store answers to a request for a slot: SHED, a request of a higher priority took its
# place in the queue.
FULL, GRANTED, TIMEOUT, SHED = 0, 1, -1, -2


def slot_key(backend: str, url: str, label: str) -> str:
    """A node's name in a store: the same in every worker and replica with the same config,
    readable, and without the URL's credentials (a digest of the URL keeps two nodes on one
    host:port apart)."""
    return f"{backend}:{label}:{hashlib.sha1(url.encode()).hexdigest()[:8]}"


def refusal(backend: str, outcome: int, queue_timeout: float) -> RouterError:
    """What a request gets when a node is full: FULL (its queue too) or TIMEOUT (it waited
    `queue_timeout` seconds in the queue)."""
    if outcome == FULL:
        return RateLimited(
            f"The backend '{backend}' is at capacity; retry shortly.",
            headers={"Retry-After": "1"},
        )
    if outcome == SHED:
        return RateLimited(
            f"The backend '{backend}' is at capacity and requests of a higher priority took "
            "this one's place in its queue; retry shortly.",
            headers={"Retry-After": "2"},
            code="queue_shed",
        )
    return ServiceUnavailable(
        f"The backend '{backend}' stayed at capacity for {queue_timeout:g}s.",
        headers={"Retry-After": "2"},
        code="queue_timeout",
    )


def unchecked() -> ServiceUnavailable:
    """The store is unreachable and limits_on_redis_failure is "deny"."""
    return ServiceUnavailable(
        "Node limits cannot be checked right now; please retry shortly.",
        code="limits_unavailable",
        headers={"Retry-After": "1"},
    )


class SlotStore(ABC):
    """Slots of nodes shared with other workers or replicas. A taken slot is a lease: given
    back by `give`, or freed by the store when its holder dies."""

    allow_on_failure = True  # limits_on_redis_failure: "allow" counts in this process instead

    async def start(self) -> None:
        """Connect; called in the event loop that will use the store."""

    async def aclose(self) -> None:
        """Disconnect."""

    async def take(
        self, key: str, limit: int, max_queue: int, queue_timeout: float, who: Claim = NOBODY
    ) -> tuple[int, str] | None:
        """A slot of the one node `key`, its queue its own: take_any for a backend of one."""
        got = await self.take_any(key, (key,), limit, max_queue, queue_timeout, who)
        return None if got is None else (got[0], got[1])

    @abstractmethod
    async def take_any(
        self, pool: str, keys: Sequence[str], limit: int, max_queue: int,
        queue_timeout: float, who: Claim = NOBODY,
    ) -> tuple[int, str, int] | None:
        """A slot of the first of the nodes `keys` (in order of preference) with fewer than
        `limit` taken, else wait in the queue of `pool` (the backend, one queue for all its
        nodes: at most `max_queue` waiting, across every holder of the store) up to
        `queue_timeout` seconds, in the order of fairness.scheduler for `who`'s key, priority
        and weight, for the first slot freed on any of `keys`. Answers (GRANTED, lease, the
        index in `keys` of the node granted), (FULL, "", -1), (SHED, "", -1) or
        (TIMEOUT, "", -1), or None when the store cannot be reached. A cancelled call leaves
        nothing taken and nothing queued."""

    @abstractmethod
    def give(self, key: str, lease: str) -> None:
        """Give a slot back, without waiting for the store."""
