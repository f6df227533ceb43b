"""The router as an ASGI application on Starlette: `uvicorn airouter.asgi:app`,
`hypercorn airouter.asgi:app`, `granian --interface asgi airouter.asgi:app`, or mounted in
another Starlette or FastAPI application:

    llm = create_app("backends.toml")
    host = Starlette(routes=[Mount("/llm", app=llm)], lifespan=...)  # chain llm's lifespan:
    # async with llm.router.lifespan_context(llm): ...

The same routes and endpoints as the RSGI app (`airouter.app`, the faster default): the route
table is one list, and the endpoints talk to an exchange, not to either interface."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from airouter import config as config_mod
from airouter.asgi_io import AsgiExchange, AsgiSend, Receive, route_path
from airouter.errors import RouterError, unknown_url
from airouter.exchange import CLOSE
from airouter.identity import RequestHeaders
from airouter.lifecycle import Holder
from airouter.routes import Route, not_allowed, render_for
from airouter.service import Service

__all__ = ["app", "create_app"]


class AsgiEndpoint:
    """One route's handler as an ASGI application."""

    __slots__ = ("route", "holder")

    def __init__(self, route: Route, holder: Holder) -> None:
        self.route = route
        self.holder = holder

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Receive, send: AsgiSend
    ) -> None:
        x = AsgiExchange(scope, receive, send, self.route.render)
        if self.holder.closing:
            x.rh.append(CLOSE)
        try:
            await self.route.handler(x)
        finally:
            await x.finish()


async def _refused(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405, in the API's error shape, with the request id."""
    assert isinstance(exc, HTTPException)
    path = route_path(request.scope)
    err: RouterError
    if exc.status_code == 405:
        err = not_allowed(request.method, path, (exc.headers or {}).get("Allow", ""))
    else:
        err = unknown_url(path)
    headers = {"x-request-id": RequestHeaders(request.headers.get).request_id, **err.headers}
    return Response(render_for(path)(err), err.status, headers, "application/json")


def create_app(
    config_path: str | os.PathLike[str] | None = None, *, signals: bool = False
) -> Starlette:
    """The router for the config at `config_path` (default: $AIROUTER_CONFIG, else
    ./backends.toml). `signals`: drain on SIGTERM itself (only when airouter's own command
    serves it; uvicorn and hypercorn drain on their own signals)."""
    path = config_path or os.environ.get("AIROUTER_CONFIG", config_mod.DEFAULT_CONFIG)
    base = os.environ.get("AIROUTER_CONFIG_BASE")
    cfg = config_mod.load(str(path), Path(base) if base and config_path is None else None)
    service = Service(cfg, signals=signals)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    routes = [
        StarletteRoute(r.path, AsgiEndpoint(r, service.holder), methods=list(r.methods))
        for r in service.routes
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _refused})
    app.state.service = service
    return app


def create_worker_app() -> Starlette:
    """Factory for `airouter --interface asgi`'s granian workers."""
    from airouter.app import setup_logging

    app = create_app(signals=True)
    service: Service = app.state.service
    setup_logging(os.environ.get("AIROUTER_LOG_LEVEL", service.cfg.server.log_level))
    return app


class _FromEnvironment:
    """`airouter.asgi:app`, for the ASGI servers: the app for $AIROUTER_CONFIG (else
    ./backends.toml), built when the server first calls it (its lifespan start-up) or asks
    for one of its attributes, not when the module is imported."""

    def __init__(self) -> None:
        self._app: Starlette | None = None

    def _built(self) -> Starlette:
        if self._app is None:
            from airouter.app import setup_logging

            self._app = create_app()
            setup_logging(os.environ.get("AIROUTER_LOG_LEVEL",
                                         self._app.state.service.cfg.server.log_level))
        return self._app

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Receive, send: AsgiSend
    ) -> None:
        await self._built()(scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._built(), name)


app = _FromEnvironment()
