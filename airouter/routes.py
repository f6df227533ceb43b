"""The route table: one declarative list, read by both interfaces (the RSGI app's own lookup,
and Starlette's `Route`s for ASGI). A route is its path (`{name}` and `{name:path}`
parameters as Starlette writes them), its methods, its handler and its API's error shape."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from airouter.cold import Auth, Cold, Health, Models, metrics
from airouter.count_tokens import CountTokensEndpoint
from airouter.doors import anthropic
from airouter.doors.door import MessagesDoor, ResponsesDoor
from airouter.errors import MethodNotAllowed, error_json
from airouter.exchange import Exchange, Render
from airouter.handlers import CompletionEndpoint
from airouter.lifecycle import Holder
from airouter.observability.record import Observer
from airouter.protocol.endpoints import Endpoint
from airouter.tokenize_api import DetokenizeEndpoint, TokenizeEndpoint
from airouter.usage import UsageEndpoint

Handler = Callable[[Exchange], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    methods: tuple[str, ...]
    handler: Handler
    render: Render = error_json

    @property
    def hot(self) -> bool:
        """A completion endpoint: looked up first, by exact path."""
        return isinstance(self.handler, CompletionEndpoint)


def table(holder: Holder, observer: Observer) -> list[Route]:
    routes = [
        Route(f"/v1/{ep.value.replace('.', '/')}", ("POST",),
              CompletionEndpoint(holder, ep, observer))
        for ep in Endpoint
    ]
    for door in (ResponsesDoor(), MessagesDoor()):
        routes.append(Route(door.path, ("POST",),
                            CompletionEndpoint(holder, door.endpoint, observer, door),
                            door.error_json))
    models, health = Models(holder), Health(holder)
    get = ("GET",)
    return [
        *routes,
        Route("/v1/messages/count_tokens", ("POST",),
              Cold(holder, CountTokensEndpoint(holder)), anthropic.error_json),
        Route("/v1/models", get, Cold(holder, models.listing)),
        Route("/v1/models/{model:path}", get, Cold(holder, models.card)),
        Route("/v1/usage", get, Cold(holder, UsageEndpoint(holder))),
        Route("/tokenize", ("POST",), Cold(holder, TokenizeEndpoint(holder))),
        Route("/detokenize", ("POST",), Cold(holder, DetokenizeEndpoint(holder))),
        Route("/health", get, Cold(holder, health.detail, Auth.METRICS)),
        Route("/health/live", get, Cold(holder, health.live, Auth.NONE)),
        Route("/health/ready", get, Cold(holder, health.ready, Auth.NONE)),
        Route("/metrics", get, Cold(holder, metrics, Auth.METRICS)),
    ]


def render_for(path: str) -> Render:
    """The error shape where no route matched: Anthropic's anywhere under its API's path."""
    return anthropic.error_json if path.startswith("/v1/messages") else error_json


def not_allowed(method: str, path: str, allow: str) -> MethodNotAllowed:
    return MethodNotAllowed(f"Method {method} is not allowed for {path}; use {allow}.",
                            headers={"Allow": allow})


_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")


def path_pattern(path: str) -> re.Pattern[str] | None:
    """The regex of a path with parameters (Starlette's `str` and `path` convertors), or None
    for a plain path."""
    if _PARAM.search(path) is None:
        return None
    out, end = [], 0
    for m in _PARAM.finditer(path):
        out.append(re.escape(path[end:m.start()]))
        out.append(f"(?P<{m[1]}>{'.+' if m[2] == 'path' else '[^/]+'})")
        end = m.end()
    out.append(re.escape(path[end:]))
    return re.compile("".join(out) + r"\Z")
