"""build_app(config): routes, OpenAI-shaped 404/405/500, and a lifespan that opens backends."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import logging.handlers
import os
import queue
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airouter import config as config_mod
from airouter.asgi import Receive, Scope, Send, send_error
from airouter.bounds import bounded
from airouter.config import Config
from airouter.count_tokens import CountTokensEndpoint
from airouter.doors import FrontDoor, MessagesDoor, ResponsesDoor
from airouter.errors import (
    MethodNotAllowed,
    RouterError,
    error_json,
    internal_error,
    unknown_url,
)
from airouter.handlers import CompletionEndpoint, HealthEndpoint, ModelsEndpoint
from airouter.lifecycle import Holder
from airouter.observability import metrics
from airouter.observability.metrics import MetricsEndpoint
from airouter.observability.nodes import NodeGauge
from airouter.observability.record import Observer, RequestIdFilter
from airouter.protocol import anthropic
from airouter.protocol.endpoints import Endpoint
from airouter.state import State
from airouter.tokenize_api import DetokenizeEndpoint, TokenizeEndpoint
from airouter.usage import UsageEndpoint

if TYPE_CHECKING:
    from airouter.observability.tracing import Tracer

log = logging.getLogger("airouter")


def _error_response(err: RouterError, path: str = "") -> Response:
    # Anthropic clients expect Anthropic's error shape anywhere under their API's path.
    render = anthropic.error_json if path.startswith("/v1/messages") else error_json
    return Response(render(err), err.status, headers=err.headers, media_type="application/json")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        err = MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.url.path}; use {allow}.",
            headers={"Allow": allow},
        )
        return _error_response(err, request.url.path)
    if exc.status_code == 404:
        return _error_response(unknown_url(request.url.path), request.url.path)
    return _error_response(RouterError(str(exc.detail), status=exc.status_code, code=None),
                           request.url.path)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %s", request.method, bounded(request.url.path),
              bounded(repr(exc)))
    return _error_response(internal_error(), request.url.path)


def _tracer(cfg: Config) -> Tracer | None:
    endpoint = os.environ.get("OTLP_ENDPOINT") or cfg.server.otlp_endpoint
    if not endpoint:
        return None
    from airouter.observability.tracing import Tracer

    return Tracer(endpoint, os.environ.get("OTEL_SERVICE_NAME", "airouter"))


def _drain_on_sigterm(holder: Holder, grace: float) -> None:
    """SIGTERM: granian stops accepting and waits for in-flight requests; we bound the wait.

    The server installs its own SIGTERM/SIGINT handlers before the lifespan starts: ours
    replaces the SIGTERM one, arms the grace timer, and hands over through SIGINT."""
    loop = asyncio.get_running_loop()
    armed = False

    def on_term() -> None:
        nonlocal armed
        if armed:
            return
        armed = True
        log.info("SIGTERM: draining %d in-flight requests (grace %gs)", len(holder.tasks), grace)
        loop.call_later(grace, holder.end_all)
        os.kill(os.getpid(), signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
    except (NotImplementedError, RuntimeError):  # not the main thread (an embedded app)
        pass


class MetricsGuard:
    """/metrics and the /health detail answer only with [server] metrics_key, when one is set."""

    def __init__(self, holder: Holder, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.holder = holder
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            self.holder.state.keys.authorize_metrics(authorization)
        except RouterError as e:
            await send_error(send, e)
            return
        await self.app(scope, receive, send)


class FastPath:
    """The completion endpoints straight off the server, everything else through starlette.

    Starlette's error and exception middleware wrap every `send` in two Python closures;
    on a 64-chunk stream that was over a tenth of the router's CPU. These endpoints handle
    their own errors, so they skip it; routing, 404/405 and the lifespan stay starlette's."""

    def __init__(self, app: Starlette, hot: dict[str, CompletionEndpoint]) -> None:
        self.app = app
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.hot.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(cfg: Config) -> FastPath:
    holder = Holder()
    holder.state = State.build(cfg, NodeGauge())
    observer = Observer(None, cfg.server.access_log)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        observer.tracer = _tracer(cfg)
        _drain_on_sigterm(holder, cfg.server.shutdown_grace)
        await holder.state.start()
        # What start-up built lives as long as the worker: out of the collector's sight, a
        # full collection walks only what requests allocate.
        gc.freeze()
        try:
            yield
        finally:
            # The server stops once every response is sent; requests may still be cleaning up
            # (draining a finished Triton call, closing an upstream). Let them end, within the
            # grace period's reach, before their connections close under them.
            if holder.tasks:
                await asyncio.wait(list(holder.tasks), timeout=cfg.server.shutdown_grace + 1)
            await holder.state.aclose()
            metrics.PENDING.flush()
            if observer.tracer is not None:
                observer.tracer.shutdown()
            flush_logs()

    hot = {
        f"/v1/{ep.value.replace('.', '/')}": CompletionEndpoint(holder, ep, observer)
        for ep in Endpoint
    }
    doors: tuple[FrontDoor, ...] = (ResponsesDoor(), MessagesDoor())
    for door in doors:
        hot[door.path] = CompletionEndpoint(holder, door.endpoint, observer, door)
    routes = [
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in hot.items()),
        Route("/v1/messages/count_tokens", CountTokensEndpoint(holder), methods=["POST"]),
        Route("/v1/models", ModelsEndpoint(holder), methods=["GET"]),
        Route("/v1/models/{model_id:path}", ModelsEndpoint(holder), methods=["GET"]),
        Route("/health", MetricsGuard(holder, HealthEndpoint(holder, "detail")), methods=["GET"]),
        Route("/health/live", HealthEndpoint(holder, "live"), methods=["GET"]),
        Route("/health/ready", HealthEndpoint(holder, "ready"), methods=["GET"]),
        Route("/metrics", MetricsGuard(holder, MetricsEndpoint()), methods=["GET"]),
        Route("/v1/usage", UsageEndpoint(holder), methods=["GET"]),
        Route("/tokenize", TokenizeEndpoint(holder), methods=["POST"]),
        Route("/detokenize", DetokenizeEndpoint(holder), methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
    )
    app.state.holder = holder
    return FastPath(app, hot)


_listeners: list[logging.handlers.QueueListener] = []


def flush_logs() -> None:
    """Write every queued log line now: a worker can end without running atexit hooks, and
    the last requests' access lines must not be lost with it."""
    for listener in _listeners:
        listener.stop()  # handles everything queued, then ends the thread
        listener.start()


def setup_logging(level: str) -> None:
    """Log lines are queued by the event loop and written by a thread: no blocking write on
    the request path (the access log writes one line per request)."""
    stream = logging.StreamHandler()
    stream.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(q)
    handler.addFilter(RequestIdFilter())
    listener = logging.handlers.QueueListener(q, stream)
    listener.start()
    _listeners.append(listener)
    atexit.register(listener.stop)
    root = logging.getLogger("airouter")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def create_app() -> FastPath:
    """Factory for granian workers: the config path comes from AIROUTER_CONFIG."""
    path = os.environ.get("AIROUTER_CONFIG", config_mod.DEFAULT_CONFIG)
    base = os.environ.get("AIROUTER_CONFIG_BASE")
    cfg = config_mod.load(path, Path(base) if base else None)
    setup_logging(os.environ.get("AIROUTER_LOG_LEVEL", cfg.server.log_level))
    return build_app(cfg)
