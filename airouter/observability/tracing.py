"""OpenTelemetry tracing via OTLP, with GenAI semantic-convention attributes.

Imported only when an OTLP endpoint is configured: with tracing off nothing is set up and the
request path pays one `is None` check."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("airouter")
_propagator = TraceContextTextMapPropagator()
_getter = DefaultGetter()


def _exporter(endpoint: str) -> Any:
    """gRPC by default; OTLP/HTTP when the endpoint says so (a /v1/traces path or port 4318)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"grpc://{endpoint}")
    if parts.path.rstrip("/").endswith("/v1/traces") or parts.port == 4318:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        url = (
            endpoint
            if parts.path.rstrip("/").endswith("/v1/traces")
            else endpoint.rstrip("/") + "/v1/traces"
        )
        return Http(endpoint=url)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

    insecure = parts.scheme != "https"
    return Grpc(endpoint=f"{parts.hostname}:{parts.port or 4317}", insecure=insecure)


class Tracer:
    """Spans for one router process."""

    def __init__(self, endpoint: str, service_name: str = "airouter") -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(
            BatchSpanProcessor(_exporter(endpoint), schedule_delay_millis=500)
        )
        self.tracer = self.provider.get_tracer("airouter")
        log.info("tracing to %s", endpoint)

    def server_span(self, name: str, headers: Mapping[str, str], attrs: dict[str, Any]) -> Span:
        parent = _propagator.extract(headers, getter=_getter)
        return self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attrs)

    def client_span(self, server: Span, name: str, attrs: dict[str, Any]) -> Span:
        ctx = trace.set_span_in_context(server)
        return self.tracer.start_span(name, context=ctx, kind=SpanKind.CLIENT, attributes=attrs)

    @staticmethod
    def inject(span: Span, carrier: dict[str, str]) -> None:
        """W3C traceparent of `span` into outgoing headers (HTTP) or metadata (gRPC)."""
        carrier.pop("traceparent", None)
        carrier.pop("tracestate", None)
        _propagator.inject(carrier, context=trace.set_span_in_context(span))

    @staticmethod
    def fail(span: Span, error_type: str, message: str) -> None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, message))

    def shutdown(self) -> None:
        self.provider.shutdown()


__all__ = ["Span", "Tracer"]
