"""App(config): the RSGI application granian serves (the default interface): the route
table's lookup, OpenAI-shaped 404/405, and the checks of a request head granian leaves to it."""

from __future__ import annotations

import asyncio
import atexit
import logging
import logging.handlers
import os
import queue
import re
from collections.abc import Awaitable
from pathlib import Path

from airouter import config as config_mod
from airouter.config import Config
from airouter.errors import InvalidRequest, unknown_url
from airouter.exchange import CLOSE
from airouter.observability.record import RequestIdFilter
from airouter.routes import Route, not_allowed, path_pattern, render_for
from airouter.rsgi import (
    PARSER_EXACT_HEAD,
    HTTPProtocol,
    RsgiExchange,
    Scope,
    head_size,
    head_too_large,
)
from airouter.service import RELOAD_CLOSE_S, Service

__all__ = ["RELOAD_CLOSE_S", "App", "OneLineFormatter", "create_app", "setup_logging"]

log = logging.getLogger("airouter")


class App:
    """The routes on granian's RSGI interface.

    The completion endpoints are looked up first, by exact path; they handle their own errors.
    The other routes are few and rarely called: each is wrapped to answer its own errors."""

    def __init__(self, cfg: Config) -> None:
        self.service = service = Service(cfg)
        self.holder = service.holder
        self.hot: dict[str, Route] = {r.path: r for r in service.routes if r.hot}
        # Heads the server's parser does not bound exactly are measured per request.
        limit = cfg.server.max_header_bytes
        self.head_limit = limit if limit > PARSER_EXACT_HEAD else 0
        # path -> {method: route}, and the routes with path parameters, in table order.
        self.exact: dict[str, dict[str, Route]] = {}
        self.patterns: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        for r in service.routes:
            pattern = path_pattern(r.path)
            if pattern is None:
                methods = self.exact.setdefault(r.path, {})
            else:
                methods = {}
                self.patterns.append((pattern, methods))
            methods.update(dict.fromkeys(r.methods, r))

    def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> Awaitable[None]:
        # Not a coroutine itself: the server awaits the endpoint's, one frame fewer per await.
        hosts = scope.headers.get_all("host")  # type: ignore[attr-defined]
        if len(hosts) != 1 and (hosts or scope.http_version == "1.1"):
            return self._bad_host(scope, proto, len(hosts))
        if self.head_limit and head_size(scope) > self.head_limit:
            return self._head_too_large(proto)
        if scope.method == "POST":
            route = self.hot.get(scope.path)
            if route is not None:
                x = RsgiExchange(scope, proto, route.render)
                if self.holder.closing:
                    x.rh.append(CLOSE)
                return route.handler(x)
        return self._other(scope, proto)

    async def _head_too_large(self, proto: HTTPProtocol) -> None:
        head_too_large(proto)

    async def _bad_host(self, scope: Scope, proto: HTTPProtocol, count: int) -> None:
        """RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host header (granian serves
        one with none or several; the router refuses it, as nginx does)."""
        what = "no Host header" if count == 0 else f"{count} Host headers"
        err = InvalidRequest(f"The request has {what}; HTTP/1.1 requires exactly one.",
                             code="invalid_host", headers={"Connection": "close"})
        RsgiExchange(scope, proto, render_for(scope.path)).send_error(err)

    def _other(self, scope: Scope, proto: HTTPProtocol) -> Awaitable[None]:
        path = scope.path
        params: dict[str, str] | None = None
        methods = self.exact.get(path)
        if methods is None:
            for pattern, candidates in self.patterns:
                m = pattern.match(path)
                if m is not None:
                    methods, params = candidates, m.groupdict()
                    break
        method = scope.method
        route = None if methods is None else methods.get("GET" if method == "HEAD" else method)
        x = RsgiExchange(scope, proto, route.render if route else render_for(path), params)
        if self.holder.closing:
            x.rh.append(CLOSE)
        if route is not None:
            return route.handler(x)
        return self._refuse(x, methods)

    async def _refuse(self, x: RsgiExchange, methods: dict[str, Route] | None) -> None:
        if methods is None:
            x.send_error(unknown_url(x.path))
            return
        x.send_error(not_allowed(x.method, x.path, ", ".join(methods)))

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.service.start())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.service.stop())
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
