"""A record per request, filled as it goes; at the end: metrics, spans and an access-log line."""

from __future__ import annotations

import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from airouter.bounds import MAX_LOGGED, bounded
from airouter.observability import metrics

if TYPE_CHECKING:
    from airouter.backends.base import Call
    from airouter.observability.tracing import Span, Tracer

access_log = logging.getLogger("airouter.access")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_encode = msgspec.json.Encoder().encode


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class Record:
    __slots__ = (
        "start",
        "request_id",
        "method",
        "path",
        "endpoint",
        "alias",
        "label",
        "backend",
        "status",
        "first",
        "last",
        "gaps",
        "key",
        "call",
        "span",
        "client_span",
        "error",
        "in_flight",
        "started",
        "broken",
        "complete",
    )

    def __init__(self, request_id: str, method: str, path: str, endpoint: str) -> None:
        self.start = time.perf_counter()
        self.request_id = request_id
        self.method = method
        self.path = path
        self.endpoint = endpoint
        self.alias = ""
        self.label = ""  # the configured alias or pattern: what metrics are labelled with
        self.backend = ""
        self.status = 0
        self.first = 0.0
        self.last = 0.0
        self.gaps: metrics.GapHistogram | None = None
        self.key = ""
        self.call: Call | None = None
        self.span: Span | None = None
        self.client_span: Span | None = None
        self.error = ""
        self.in_flight: Any = None
        self.started = False  # response headers sent
        # The status of a failure after the headers went out with 200 (the stream broke):
        # what it would have been had it come first. 0 when none.
        self.broken = 0
        self.complete = False  # the last byte of the answer was sent

    def chunk_sent(self) -> None:
        now = time.perf_counter()
        if not self.first:
            self.first = now
            if self.client_span is not None:
                self.client_span.add_event("gen_ai.first_token")
        else:
            gaps = self.gaps
            if gaps is None:
                gaps = self.gaps = metrics.GapHistogram()
            gaps.add(now - self.last)
        self.last = now


class _Series:
    """The metric children of one (model label, backend, endpoint), each made on first use:
    a request finds them with one dict access each instead of a label tuple per metric."""

    __slots__ = ("_children", "_labels", "_requests")

    def __init__(self, label: str, backend: str, endpoint: str) -> None:
        self._labels = (label, backend, endpoint)
        self._children: dict[Any, Any] = {}
        self._requests: dict[tuple[str, int, str], Any] = {}

    def child(self, metric: Any) -> Any:
        c = self._children.get(metric)
        if c is None:
            label, backend, endpoint = self._labels
            with_endpoint = metric is metrics.DURATION
            c = self._children[metric] = (
                metric.labels(label, backend, endpoint) if with_endpoint
                else metric.labels(label, backend)
            )
        return c

    def requests(self, node: str, status: int, outcome: str) -> Any:
        key = (node, status, outcome)
        c = self._requests.get(key)
        if c is None:
            label, backend, endpoint = self._labels
            c = self._requests[key] = metrics.REQUESTS.labels(
                label, backend, node, endpoint, str(status), outcome
            )
        return c


class Observer:
    """Turns finished records into metrics, spans and access-log lines."""

    def __init__(self, tracer: Tracer | None, access: bool) -> None:
        self.tracer = tracer
        self.access = access
        self._children: dict[tuple[str, ...], Any] = {}
        self._series: dict[tuple[str, str, str], _Series] = {}

    def series(self, rec: Record) -> _Series:
        key = (rec.label, rec.backend, rec.endpoint)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(*key)
        return s

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def started(self, rec: Record) -> None:
        rec.in_flight = self.series(rec).child(metrics.IN_FLIGHT)
        metrics.PENDING.live_add(rec.in_flight, 1)

    @staticmethod
    def outcome(rec: Record) -> str:
        """How the request ended, beyond its status: `ok`, `error` (an error status), or
        `broken` (it started with 200 and then failed: the client got an in-band error)."""
        if rec.broken:
            return "broken"
        return "error" if rec.status >= 400 else "ok"

    def finish(self, rec: Record) -> None:
        end = time.perf_counter()
        duration = end - rec.start
        pending = metrics.PENDING
        if rec.in_flight is not None:
            pending.live_add(rec.in_flight, -1)
        stats = rec.call.stats if rec.call is not None else None
        node = stats.node if stats else ""
        if len(rec.error) > MAX_LOGGED:  # an upstream's error code, relayed
            rec.error = bounded(rec.error)
        outcome = self.outcome(rec)
        if rec.label:
            series = self.series(rec)
            pending.inc(series.requests(node, rec.status, outcome))
            pending.observe(series.child(metrics.DURATION), duration)
            if rec.first:
                pending.observe(series.child(metrics.TTFT), rec.first - rec.start)
            if rec.gaps is not None:
                pending.add_gaps(series.child(metrics.ITL), rec.gaps)
            if stats is not None:
                if stats.prompt_tokens:
                    pending.inc(series.child(metrics.PROMPT_TOKENS), stats.prompt_tokens)
                if stats.completion_tokens:
                    pending.inc(series.child(metrics.COMPLETION_TOKENS), stats.completion_tokens)
            if (rec.status >= 500 or rec.broken >= 500) and rec.backend:
                pending.inc(
                    self._child(
                        metrics.UPSTREAM_ERRORS, rec.backend, node, rec.error or str(rec.status)
                    )
                )
        if self.tracer is not None:
            self._end_spans(rec, stats)
        if self.access:
            line: dict[str, Any] = {
                "request_id": rec.request_id,
                "method": rec.method,
                "path": rec.path,
                "status": rec.status,
                "outcome": outcome,
                "model": rec.alias or None,
                "backend": rec.backend or None,
                "node": node or None,
                "key": rec.key or None,
                "duration_ms": round(duration * 1000, 2),
                "ttft_ms": round((rec.first - rec.start) * 1000, 2) if rec.first else None,
                "tokens_in": stats.prompt_tokens if stats else None,
                "tokens_out": stats.completion_tokens if stats else None,
            }
            if rec.error:
                line["error"] = rec.error
            if stats is not None and stats.queued:  # waited for a slot of a limited node
                line["queue_ms"] = round(stats.queued * 1000, 2)
            access_log.info(_encode(line).decode())

    def _end_spans(self, rec: Record, stats: Any) -> None:
        assert self.tracer is not None
        for span in (rec.client_span, rec.span):
            if span is None:
                continue
            if stats is not None:
                if stats.response_model:
                    span.set_attribute("gen_ai.response.model", bounded(stats.response_model))
                if stats.prompt_tokens is not None:
                    span.set_attribute("gen_ai.usage.input_tokens", stats.prompt_tokens)
                if stats.completion_tokens is not None:
                    span.set_attribute("gen_ai.usage.output_tokens", stats.completion_tokens)
                if stats.finish_reason:
                    span.set_attribute("gen_ai.response.finish_reasons", [stats.finish_reason])
            if rec.status >= 400 or rec.broken:
                self.tracer.fail(span, rec.error or str(rec.status), rec.error)
        if rec.span is not None:
            rec.span.set_attribute("http.response.status_code", rec.status)
        if rec.client_span is not None:
            rec.client_span.end()
        if rec.span is not None:
            rec.span.end()
