"""The fair admission queues as metrics: requests waiting for a full node's slot per
priority, how long each waited per priority and key, and those refused (shed, full, timed
out). Written through metrics.PENDING: no locked file write per request."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from airouter.fairness.scheduler import NAMES
from airouter.observability.metrics import PENDING

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

QUEUE_LENGTH = Gauge(
    "airouter_queue_length",
    "Requests waiting now for a slot of a full node (a shared store's answer included), "
    "by backend and priority; summed over the workers.",
    ["backend", "priority"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "airouter_queue_wait_seconds",
    "Time a request took to get a slot of a node with max_concurrent (0 when one was free), "
    "by backend, priority and key, whatever came of it.",
    ["backend", "priority", "key"],
    buckets=WAIT_BUCKETS,
)
QUEUE_REFUSED = Counter(
    "airouter_queue_refused",
    "Requests that got no slot: shed (a request of a higher priority took their place, 429), "
    "full (no place in the queue, 429), timeout (queue_timeout passed, 503) or left (the "
    "client went away while it waited).",
    ["backend", "priority", "key", "reason"],
)
QUEUE_SHED = Counter(
    "airouter_queue_shed",
    "Waiting requests displaced by a request of a higher priority (each got 429).",
    ["backend", "priority", "key"],
)


class QueueMetrics:
    """The pool observer's queue half (observer.NodeObserver)."""

    __slots__ = ()
    _children: dict[Any, Any]

    def _child(self, metric: Any, *labels: str) -> Any:
        k = (metric, *labels)
        c = self._children.get(k)
        if c is None:
            c = self._children[k] = metric.labels(*labels)
        return c

    def queue_length(self, backend: str, priority: int, delta: int) -> None:
        PENDING.live_add(self._child(QUEUE_LENGTH, backend, NAMES[priority]), delta)

    def queue_wait(
        self, backend: str, key: str, priority: int, seconds: float, outcome: str
    ) -> None:
        name = NAMES[priority]
        PENDING.observe(self._child(QUEUE_WAIT, backend, name, key), seconds)
        if outcome != "granted":
            PENDING.inc(self._child(QUEUE_REFUSED, backend, name, key, outcome))
            if outcome == "shed":
                PENDING.inc(self._child(QUEUE_SHED, backend, name, key))
