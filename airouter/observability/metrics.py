"""Prometheus metrics (multiprocess-safe across granian workers) and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# LLM latencies span milliseconds (a cached answer) to minutes (a long generation).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1)
_ITL_BOUNDS = (*ITL_BUCKETS, float("inf"))

REQUESTS = Counter(
    "airouter_requests",
    "Requests answered, by model alias, backend, node, HTTP status and outcome (ok, error, "
    "or broken: a stream that started with 200 and then failed).",
    ["model", "backend", "node", "endpoint", "status", "outcome"],
)
DURATION = Histogram(
    "airouter_request_duration_seconds",
    "Time from request to the last byte of the answer.",
    ["model", "backend", "endpoint"],
    buckets=DURATION_BUCKETS,
)
TTFT = Histogram(
    "airouter_time_to_first_token_seconds",
    "Time from request to the first streamed chunk.",
    ["model", "backend"],
    buckets=TTFT_BUCKETS,
)
ITL = Histogram(
    "airouter_inter_token_latency_seconds",
    "Gaps between streamed chunks sent to the client.",
    ["model", "backend"],
    buckets=ITL_BUCKETS,
)
PROMPT_TOKENS = Counter(
    "airouter_prompt_tokens", "Prompt tokens, as the backend counted them.", ["model", "backend"]
)
COMPLETION_TOKENS = Counter(
    "airouter_completion_tokens",
    "Completion tokens, as the backend counted them.",
    ["model", "backend"],
)
IN_FLIGHT = Gauge(
    "airouter_requests_in_flight",
    "Requests being served now.",
    ["model", "backend"],
    multiprocess_mode="livesum",
)
NODE_UP = Gauge(
    "airouter_backend_node_up",
    "1 when a backend node is healthy, else 0.",
    ["backend", "node"],
    multiprocess_mode="livemax",
)
UPSTREAM_ERRORS = Counter(
    "airouter_upstream_errors", "Backend failures by kind.", ["backend", "node", "kind"]
)

# Counted by the main process (it validates the file on SIGHUP), summed by /metrics with the
# workers' files. Both results are written at start so they read 0 before a first reload.
CONFIG_RELOADS = Counter(
    "airouter_config_reloads",
    "SIGHUP reloads: ok (the file validated and new workers replaced the old ones) or "
    "rejected (the file failed validation; nothing changed).",
    ["result"],
)


# How long an observation may wait in this process before it reaches the shared files.
# /metrics flushes the worker that serves it first; other workers lag by at most this.
FLUSH_S = 0.1


class Pending:
    """Observations counted in this process and written to the metric files in batches.

    In multiprocess mode every `inc` is a locked write to a memory-mapped file plus a pid
    check: ten of them per request were several percent of the router's CPU. Here a request
    adds to plain dicts; a timer armed by the first pending value writes each touched
    child once."""

    __slots__ = ("counters", "hists", "live", "handle")

    def __init__(self) -> None:
        self.counters: dict[Any, float] = {}
        self.hists: dict[Any, list[Any]] = {}  # child -> [per-bucket counts, sum]
        self.live: dict[Any, int] = {}  # gauge child -> requests in flight in this process
        self.handle: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self.handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test, a script): write at once
                self.flush()
                return
            self.handle = loop.call_later(FLUSH_S, self.flush)

    def inc(self, child: Any, amount: float = 1.0) -> None:
        self.counters[child] = self.counters.get(child, 0.0) + amount
        self._arm()

    def observe(self, child: Any, value: float) -> None:
        h = self.hists.get(child)
        if h is None:
            h = self.hists[child] = [[0] * len(child._upper_bounds), 0.0]
        h[0][bisect_left(child._upper_bounds, value)] += 1
        h[1] += value
        self._arm()

    def add_gaps(self, child: Any, gaps: GapHistogram) -> None:
        h = self.hists.get(child)
        if h is None:
            h = self.hists[child] = [[0] * len(_ITL_BOUNDS), 0.0]
        counts = h[0]
        for i, c in enumerate(gaps.counts):
            counts[i] += c
        h[1] += gaps.total
        self._arm()

    def live_add(self, child: Any, delta: int) -> None:
        self.live[child] = self.live.get(child, 0) + delta
        self._arm()

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        counters, self.counters = self.counters, {}
        hists, self.hists = self.hists, {}
        for child, amount in counters.items():
            child.inc(amount)
        for child, (counts, total) in hists.items():
            child._sum.inc(total)
            for bucket, c in zip(child._buckets, counts, strict=True):
                if c:
                    bucket.inc(c)
        for child, n in self.live.items():
            child.set(n)


PENDING = Pending()


class GapHistogram:
    """Inter-token gaps counted locally per request and added to ITL once at its end:
    a bisect and an increment per chunk instead of a locked histogram update."""

    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * len(_ITL_BOUNDS)
        self.total = 0.0
        self.n = 0

    def add(self, gap: float) -> None:
        self.counts[bisect_left(_ITL_BOUNDS, gap)] += 1
        self.total += gap
        self.n += 1


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY


def exposition() -> tuple[bytes, str]:
    """Every worker's metrics, summed, in Prometheus text format, and its content type. File
    I/O (the workers' metric files): call it off the event loop."""
    PENDING.flush()
    return generate_latest(_registry()), CONTENT_TYPE_LATEST
