"""Who a request waits for a node as: its key's name, priority and weight, set by the router
for the request's task (a context variable, so that the backends' pools read it without it
passing through every backend's signature), and where its time in a queue is written."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Protocol

from airouter.fairness.scheduler import NORMAL, PRIORITIES

if TYPE_CHECKING:
    from airouter.share_config import ShareConfig


class Stats(Protocol):
    """Where a request's waits add up (backends.base.Stats)."""

    queued: float


class Claim:
    __slots__ = ("key", "priority", "weight", "stats")

    def __init__(
        self, key: str, priority: int, weight: float, stats: Stats | None = None
    ) -> None:
        self.key = key
        self.priority = priority
        self.weight = weight
        self.stats = stats  # the request's: `queued` adds up its waits

    def waited(self, seconds: float) -> None:
        if self.stats is not None:
            self.stats.queued += seconds


# A request with no claim (an embedded caller, a health check): normal, weight 1, no key.
NOBODY = Claim("", NORMAL, 1.0)
claim_var: contextvars.ContextVar[Claim] = contextvars.ContextVar("claim", default=NOBODY)


def share_of(key: ShareConfig | None) -> tuple[int | None, float | None]:
    """A [keys.*] or [models.*] table's priority and weight; None where it sets none."""
    if key is None:
        return None, None
    return (None if key.priority is None else PRIORITIES[key.priority]), key.weight


def claim(
    name: str, share: tuple[int | None, float | None], model: ShareConfig, stats: Stats
) -> None:
    """The current request waits as key `name` with `share` (its key's), else `model`'s."""
    priority, weight = share
    if priority is None:
        priority = NORMAL if model.priority is None else PRIORITIES[model.priority]
    if weight is None:
        weight = 1.0 if model.weight is None else model.weight
    claim_var.set(Claim(name, priority, weight, stats))
