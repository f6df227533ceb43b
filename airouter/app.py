"""App(config): the RSGI application granian serves: routes, OpenAI-shaped 404/405/500,
and the worker's start-up and shut-down (backends opened and closed)."""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import logging.handlers
import os
import queue
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from airouter import config as config_mod
from airouter import reloading
from airouter.bounds import bounded
from airouter.config import Config
from airouter.count_tokens import CountTokensEndpoint
from airouter.doors import anthropic
from airouter.doors.door import FrontDoor, MessagesDoor, ResponsesDoor
from airouter.errors import (
    InvalidRequest,
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
from airouter.protocol.endpoints import Endpoint
from airouter.rsgi import (
    PARSER_EXACT_HEAD,
    HTTPProtocol,
    Scope,
    closing,
    head_size,
    head_too_large,
    send_error,
)
from airouter.state import State
from airouter.tokenize_api import DetokenizeEndpoint, TokenizeEndpoint
from airouter.usage import UsageEndpoint

if TYPE_CHECKING:
    from airouter.observability.tracing import Tracer

log = logging.getLogger("airouter")


Handler = Callable[[Scope, HTTPProtocol], Awaitable[None]]


def _render(path: str) -> Callable[[RouterError], bytes]:
    # Anthropic clients expect Anthropic's error shape anywhere under their API's path.
    return anthropic.error_json if path.startswith("/v1/messages") else error_json


def _tracer(cfg: Config) -> Tracer | None:
    endpoint = os.environ.get("OTLP_ENDPOINT") or cfg.server.otlp_endpoint
    if not endpoint:
        return None
    from airouter.observability.tracing import Tracer

    return Tracer(endpoint, os.environ.get("OTEL_SERVICE_NAME", "airouter"))


# On a reload, how long an old worker goes on accepting and answering with
# `Connection: close` before its listener closes: keep-alive connections in use end at a
# request boundary, and their clients reconnect to the new workers, instead of finding the
# connection closed under a request they are sending.
RELOAD_CLOSE_S = 1.0


def _drain_on_sigterm(holder: Holder, cfg: Config, generation: str | None) -> None:
    """SIGTERM: granian stops accepting and waits for in-flight requests; we bound the wait.

    The server installs its own SIGTERM/SIGINT handlers before the worker starts: ours
    replaces the SIGTERM one, arms the grace timer, and hands over through SIGINT.

    A reload (the main process's marker names a newer config generation than the one this
    worker started with) is not a shutdown: answers carry `Connection: close` for
    RELOAD_CLOSE_S before the listener closes, and in-flight requests get `reload_grace`.
    A SIGTERM that follows (the router stopping while this worker drains) cuts the grace
    down to `shutdown_grace`."""
    loop = asyncio.get_running_loop()
    deadline: asyncio.TimerHandle | None = None
    stopping = False

    def arm(grace: float) -> None:
        nonlocal deadline
        when = loop.time() + grace
        if deadline is not None:
            if deadline.when() <= when:
                return
            deadline.cancel()
        deadline = loop.call_at(when, holder.end_all)

    def stop_accepting() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            os.kill(os.getpid(), signal.SIGINT)

    def on_term() -> None:
        marker = reloading.read_marker()
        holder.closing = True
        tasks = len(holder.tasks)
        if deadline is None and generation is not None and marker not in (None, generation,
                                                                             reloading.STOP):
            grace = cfg.server.reload_grace
            log.info("reload: draining %d in-flight requests (grace %gs)", tasks, grace)
            arm(RELOAD_CLOSE_S + grace)
            loop.call_later(RELOAD_CLOSE_S, stop_accepting)
            return
        grace = cfg.server.shutdown_grace
        log.info("SIGTERM: draining %d in-flight requests (grace %gs)", tasks, grace)
        arm(grace)
        stop_accepting()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
    except (NotImplementedError, RuntimeError):  # not the main thread (an embedded app)
        pass


class MetricsGuard:
    """/metrics and the /health detail answer only with [server] metrics_key, when one is set."""

    def __init__(self, holder: Holder, handler: Handler):
        self.holder = holder
        self.handler = handler

    async def __call__(self, scope: Scope, proto: HTTPProtocol) -> None:
        try:
            self.holder.state.keys.authorize_metrics(scope.headers.get("authorization"))
        except RouterError as e:
            send_error(proto, e)
            return
        await self.handler(scope, proto)


class App:
    """The routes on granian's RSGI interface.

    The completion endpoints are looked up first, by exact path; they handle their own errors.
    The other routes are few and rarely called: a failure in one is logged and answered 500."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.generation = reloading.read_marker()
        self.holder = holder = Holder()
        holder.state = State.build(cfg, NodeGauge())
        self.observer = observer = Observer(None, cfg.server.access_log)
        hot: dict[str, Handler] = {
            f"/v1/{ep.value.replace('.', '/')}": CompletionEndpoint(holder, ep, observer)
            for ep in Endpoint
        }
        doors: tuple[FrontDoor, ...] = (ResponsesDoor(), MessagesDoor())
        for door in doors:
            hot[door.path] = CompletionEndpoint(holder, door.endpoint, observer, door)
        self.hot = hot
        # Heads the server's parser does not bound exactly are measured per request.
        limit = cfg.server.max_header_bytes
        self.head_limit = limit if limit > PARSER_EXACT_HEAD else 0
        models = ModelsEndpoint(holder)
        # path -> {method: handler}
        self.routes: dict[str, dict[str, Handler]] = {
            **{path: {"POST": h} for path, h in hot.items()},
            "/v1/messages/count_tokens": {"POST": CountTokensEndpoint(holder)},
            "/v1/models": {"GET": models},
            "/health": {"GET": MetricsGuard(holder, HealthEndpoint(holder, "detail"))},
            "/health/live": {"GET": HealthEndpoint(holder, "live")},
            "/health/ready": {"GET": HealthEndpoint(holder, "ready")},
            "/metrics": {"GET": MetricsGuard(holder, MetricsEndpoint())},
            "/v1/usage": {"GET": UsageEndpoint(holder)},
            "/tokenize": {"POST": TokenizeEndpoint(holder)},
            "/detokenize": {"POST": DetokenizeEndpoint(holder)},
        }

    def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> Awaitable[None]:
        # Not a coroutine itself: the server awaits the endpoint's, one frame fewer per await.
        hosts = scope.headers.get_all("host")  # type: ignore[attr-defined]
        if len(hosts) != 1 and (hosts or scope.http_version == "1.1"):
            return self._bad_host(scope, proto, len(hosts))
        if self.head_limit and head_size(scope) > self.head_limit:
            return self._head_too_large(proto)
        if self.holder.closing:
            proto = closing(proto)
        if scope.method == "POST":
            endpoint = self.hot.get(scope.path)
            if endpoint is not None:
                return endpoint(scope, proto)
        return self._other(scope, proto)

    async def _head_too_large(self, proto: HTTPProtocol) -> None:
        head_too_large(proto)

    async def _bad_host(self, scope: Scope, proto: HTTPProtocol, count: int) -> None:
        """RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host header (granian serves
        one with none or several; the router refuses it, as nginx does)."""
        what = "no Host header" if count == 0 else f"{count} Host headers"
        err = InvalidRequest(f"The request has {what}; HTTP/1.1 requires exactly one.",
                             code="invalid_host", headers={"Connection": "close"})
        send_error(proto, err, render=_render(scope.path))

    async def _other(self, scope: Scope, proto: HTTPProtocol) -> None:
        path = scope.path
        try:
            await self._route(scope, proto, path)
        except Exception as exc:
            log.error("unhandled error on %s %s: %s", scope.method, bounded(path),
                      bounded(repr(exc)))
            send_error(proto, internal_error(), render=_render(path))

    async def _route(self, scope: Scope, proto: HTTPProtocol, path: str) -> None:
        methods: dict[str, Handler] | None = self.routes.get(path)
        if methods is None:
            if not path.startswith("/v1/models/"):
                send_error(proto, unknown_url(path), render=_render(path))
                return
            methods = self.routes["/v1/models"]  # /v1/models/{id}: the same handler
        method = scope.method
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            allow = ", ".join(methods)
            err = MethodNotAllowed(
                f"Method {method} is not allowed for {path}; use {allow}.",
                headers={"Allow": allow},
            )
            send_error(proto, err, render=_render(path))
            return
        await handler(scope, proto)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self._start())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self._stop())

    async def _start(self) -> None:
        self.observer.tracer = _tracer(self.cfg)
        _drain_on_sigterm(self.holder, self.cfg, self.generation)
        await self.holder.state.start()
        # What start-up built lives as long as the worker: out of the collector's sight, a
        # full collection walks only what requests allocate.
        gc.freeze()

    async def _stop(self) -> None:
        # The server stops once every response is sent; requests may still be cleaning up
        # (draining a finished Triton call, closing an upstream). Let them end, within the
        # grace period's reach, before their connections close under them.
        holder = self.holder
        if holder.tasks:
            await asyncio.wait(list(holder.tasks), timeout=self.cfg.server.shutdown_grace + 1)
        await holder.state.aclose()
        metrics.PENDING.flush()
        if self.observer.tracer is not None:
            self.observer.tracer.shutdown()
        flush_logs()


_listeners: list[logging.handlers.QueueListener] = []

# C0 and C1 controls, DEL and the Unicode line separators: what could end a log line early or
# forge another one, wherever a client's string sits in a message.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")


class OneLineFormatter(logging.Formatter):
    """Every record's message stays one line: control characters in it are escaped (a
    traceback that log.exception appends is the formatter's own and keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if _CONTROL.search(message) is not None:
            record.message = _CONTROL.sub(_escape, message)
        return super().formatMessage(record)


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
        OneLineFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
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


def create_app() -> App:
    """Factory for granian workers: the config path comes from AIROUTER_CONFIG."""
    path = os.environ.get("AIROUTER_CONFIG", config_mod.DEFAULT_CONFIG)
    base = os.environ.get("AIROUTER_CONFIG_BASE")
    cfg = config_mod.load(path, Path(base) if base else None)
    setup_logging(os.environ.get("AIROUTER_LOG_LEVEL", cfg.server.log_level))
    return App(cfg)
