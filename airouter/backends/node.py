"""One node of a backend: its name in every report (host:port), its weight, and what the pool
knows of it (requests in flight and queued, failures, the health checks' verdict)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from airouter.backends.node_slots import slot_key

__all__ = ["Node", "NodeSpec", "node_label"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def node_label(url: str) -> str:
    """A node's one name in /health, metrics, logs, spans and the access log: host:port, never
    credentials, a path or a query string. A URL (`https://user:key@host/v1`) and a gRPC
    address (`host:8001`) both come out as host:port."""
    if "//" not in url:
        return url.rpartition("@")[2]
    parts = urlsplit(url)
    host = parts.hostname
    if not host:  # a gRPC target such as dns:///host:8001
        return url.rpartition("@")[2]
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


@dataclass(slots=True, frozen=True)
class NodeSpec:
    url: str
    weight: float = 1.0


class Node:
    __slots__ = (
        "label",
        "url",
        "weight",
        "in_flight",
        "healthy",
        "ejected_until",
        "failures",
        "checks_ok",
        "checks_bad",
        "room",
        "served",
        "completed",
        "checked_at",
        "answering",
        "backend",
        "key",
        "waiting",
    )

    def __init__(self, backend: str, spec: NodeSpec) -> None:
        self.backend = backend
        self.url = spec.url
        self.weight = spec.weight
        self.in_flight = 0
        self.healthy = True  # the active checks' verdict
        self.ejected_until = 0.0  # passive ejection after consecutive failures
        self.failures = 0
        self.checks_ok = 0
        self.checks_bad = 0
        self.served = 0
        # Answers the node finished, their count at the last health check, and answers under
        # way: a node that answers requests is alive even if its health endpoint is slow.
        self.completed = 0
        self.checked_at = 0
        self.answering = 0
        # Requests of this process waiting for a slot with this node their first choice (they
        # wait in the pool's one queue, or a shared store's, for a slot of any of its nodes).
        self.waiting = 0
        # Engine saturation (NodePool.engine_read): requests that may still start on the node
        # before its engine metrics are read again; -1 no bound, 0 held (saturated).
        self.room = -1
        self.label = node_label(spec.url)
        self.key = slot_key(backend, spec.url, self.label)

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        state = "up" if self.available(now) else ("ejected" if self.healthy else "down")
        return {
            "url": self.label,
            "status": state,
            "in_flight": self.in_flight,
            "queued": self.waiting,
            "weight": self.weight,
        }
