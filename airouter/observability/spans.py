"""The OpenTelemetry spans of one request (GenAI semantic conventions)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airouter.bounds import bounded

if TYPE_CHECKING:
    from airouter.backends.base import Target
    from airouter.observability.record import Record
    from airouter.observability.tracing import Tracer
    from airouter.protocol.endpoints import Endpoint

OPERATION = {
    "chat.completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}


def start_spans(
    tracer: Tracer,
    rec: Record,
    endpoint: Endpoint,
    target: Target,
    body: dict[str, Any],
    forward: dict[str, str],
) -> None:
    """A server span for the request and a client span for the backend call; the client
    span's context goes into `forward`, the headers the backend gets."""
    op = OPERATION[endpoint.value]
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": op,
        "gen_ai.request.model": rec.alias,
        "http.request.method": "POST",
        "url.path": rec.path,
    }
    for k, attr in (
        ("max_tokens", "gen_ai.request.max_tokens"),
        ("max_completion_tokens", "gen_ai.request.max_tokens"),
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
        ("seed", "gen_ai.request.seed"),
    ):
        v = body.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            attrs[attr] = v
    rec.span = tracer.server_span(f"{op} {rec.alias}", forward, attrs)
    backend = target.backend
    client_attrs = {
        **attrs,
        "gen_ai.request.model": bounded(target.backend_model),
        "gen_ai.provider.name": backend.provider,
        "airouter.backend": backend.name,
    }
    client_attrs.pop("url.path")
    client_attrs.pop("http.request.method")
    rec.client_span = tracer.client_span(
        rec.span, f"{op} {client_attrs['gen_ai.request.model']}", client_attrs
    )
    tracer.inject(rec.client_span, forward)
