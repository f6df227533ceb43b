"""The node pool's verdicts as the `airouter_backend_node_up` gauge; the prefix balancers'
cache feedback and the engines' scraped load as counters and gauges."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from airouter.observability import metrics
from airouter.observability.queue import QueueMetrics

_LABELS = ["backend", "node"]
PREFIX_PREDICTED = Counter(
    "airouter_prefix_cache_predicted",
    "Prefix-routed answers whose node the router's index expected to hold the prefix.",
    _LABELS,
)
PREFIX_CONFIRMED = Counter(
    "airouter_prefix_cache_confirmed",
    "Prefix-routed answers whose usage reported cached prompt tokens (cached_tokens > 0).",
    _LABELS,
)
PREFIX_CONTRADICTED = Counter(
    "airouter_prefix_cache_contradicted",
    "Predicted prefix hits the engine denied (cached_tokens = 0): the index was demoted.",
    _LABELS,
)
PREFIX_REPORTED = Counter(
    "airouter_prefix_cache_reported",
    "Prefix-routed answers whose usage said how many prompt tokens were cached.",
    _LABELS,
)
# Every worker reads the same engine: the highest live value is the engine's.
ENGINE_WAITING = Gauge("airouter_engine_waiting_requests", "Requests queued in the node's "
                       "engine, as its metrics said.", _LABELS, multiprocess_mode="livemax")
ENGINE_RUNNING = Gauge("airouter_engine_running_requests", "Requests running in the node's "
                       "engine, as its metrics said.", _LABELS, multiprocess_mode="livemax")
ENGINE_KV = Gauge("airouter_engine_kv_cache_usage", "Fraction of the node's KV cache in use, as "
                  "its metrics said.", _LABELS, multiprocess_mode="livemax")
ENGINE_READ = Gauge("airouter_engine_metrics_up", "1 when the node's engine metrics were "
                    "read at the last try, else 0.", _LABELS, multiprocess_mode="livemax")

STREAM_RESUMES = Counter(
    "airouter_stream_resumes",
    "Streams broken off mid-answer on backends with `resume` on: resumed (another node "
    "finished the answer), failed (no node could), not_resumable (tools, logprobs, ...) or "
    "no_retries (the backend's retries were spent).",
    ["backend", "outcome"],
)


class NodeGauge(QueueMetrics):
    """A `NodeObserver`: one gauge child per node, made on its first verdict."""

    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[Any, Any] = {}

    def node_state(self, backend: str, node: str, up: bool) -> None:
        child = self._children.get((backend, node))
        if child is None:
            child = self._children[backend, node] = metrics.NODE_UP.labels(backend, node)
        child.set(1 if up else 0)

    def prefix_cache(self, backend: str, node: str, predicted: bool, confirmed: bool) -> None:
        PREFIX_REPORTED.labels(backend, node).inc()
        if predicted:
            PREFIX_PREDICTED.labels(backend, node).inc()
        if confirmed:
            PREFIX_CONFIRMED.labels(backend, node).inc()
        if predicted and not confirmed:
            PREFIX_CONTRADICTED.labels(backend, node).inc()

    def engine_load(self, backend: str, node: str, load: dict[str, float] | None) -> None:
        ENGINE_READ.labels(backend, node).set(0 if load is None else 1)
        if load is None:
            return
        ENGINE_WAITING.labels(backend, node).set(load.get("waiting", 0.0))
        ENGINE_RUNNING.labels(backend, node).set(load.get("running", 0.0))
        if "kv_usage" in load:
            ENGINE_KV.labels(backend, node).set(load["kv_usage"])

    def stream_resume(self, backend: str, outcome: str) -> None:
        STREAM_RESUMES.labels(backend, outcome).inc()
