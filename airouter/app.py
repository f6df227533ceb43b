"""build_app(config): routes, OpenAI-shaped 404/405/500, and a lifespan that opens backends."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airouter import config as config_mod
from airouter.backends.base import Endpoint
from airouter.config import Config
from airouter.errors import MethodNotAllowed, RouterError, error_json, internal_error
from airouter.handlers import (
    CompletionEndpoint,
    HealthEndpoint,
    Holder,
    ModelsEndpoint,
    not_found,
)
from airouter.state import State

log = logging.getLogger("airouter")


def _error_response(err: RouterError) -> Response:
    return Response(error_json(err), err.status, headers=err.headers, media_type="application/json")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        err = MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.url.path}; use {allow}.",
            headers={"Allow": allow},
        )
        return _error_response(err)
    if exc.status_code == 404:
        return _error_response(not_found(request.url.path))
    return _error_response(RouterError(str(exc.detail), status=exc.status_code, code=None))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
    return _error_response(internal_error())


def build_app(cfg: Config) -> Starlette:
    holder = Holder()
    holder.state = State.build(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await holder.state.start()
        try:
            yield
        finally:
            await holder.state.aclose()

    routes = [
        Route("/v1/chat/completions", CompletionEndpoint(holder, Endpoint.CHAT), methods=["POST"]),
        Route(
            "/v1/completions", CompletionEndpoint(holder, Endpoint.COMPLETIONS), methods=["POST"]
        ),
        Route("/v1/embeddings", CompletionEndpoint(holder, Endpoint.EMBEDDINGS), methods=["POST"]),
        Route("/v1/models", ModelsEndpoint(holder), methods=["GET"]),
        Route("/v1/models/{model_id:path}", ModelsEndpoint(holder), methods=["GET"]),
        Route("/health", HealthEndpoint(holder, "detail"), methods=["GET"]),
        Route("/health/live", HealthEndpoint(holder, "live"), methods=["GET"]),
        Route("/health/ready", HealthEndpoint(holder, "ready"), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
    )
    app.state.holder = holder
    return app


def create_app() -> Starlette:
    """Factory for granian workers: the config path comes from AIROUTER_CONFIG."""
    path = os.environ.get("AIROUTER_CONFIG", config_mod.DEFAULT_CONFIG)
    return build_app(config_mod.load(path))
