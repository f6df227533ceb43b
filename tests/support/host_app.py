"""A host application, as a user would write one: its own route, and the router mounted under
/llm with its lifespan chained into the host's. Served by uvicorn in the tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from airouter.asgi import create_app

llm = create_app(os.environ["AIROUTER_CONFIG"])


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "from the host"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with llm.router.lifespan_context(llm):
        yield


app = Starlette(routes=[Route("/hello", hello), Mount("/llm", app=llm)], lifespan=lifespan)
