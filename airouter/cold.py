"""The rarely called endpoints' shared steps (`Cold`): the request id set for the log and
echoed on every answer, the key checked, errors in the route's API's shape, and a failure
logged and answered 500. And the smallest of them: the model list and the health checks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

import msgspec

from airouter.bounds import bounded
from airouter.errors import RouterError, internal_error
from airouter.exchange import ClientGone, Exchange
from airouter.observability.metrics import exposition
from airouter.observability.record import request_id_var

if TYPE_CHECKING:
    from airouter.auth import ClientKey
    from airouter.lifecycle import Holder

log = logging.getLogger("airouter")


class Auth(Enum):
    KEY = "key"  # a client key (its name is handed to the endpoint)
    METRICS = "metrics"  # [server] metrics_key, when one is set
    NONE = "none"  # open: the liveness and readiness probes


# What a cold endpoint does once its caller is known: answer through the exchange.
ColdHandler = Callable[[Exchange, "ClientKey | None"], Awaitable[None]]


class Cold:
    __slots__ = ("holder", "handler", "auth")

    def __init__(self, holder: Holder, handler: ColdHandler, auth: Auth = Auth.KEY) -> None:
        self.holder = holder
        self.handler = handler
        self.auth = auth

    async def __call__(self, x: Exchange) -> None:
        request_id_var.set(x.headers.request_id)
        try:
            key = None
            if self.auth is Auth.KEY:
                key = self.holder.state.keys.authenticate(x.headers.authorization,
                                                          x.headers.api_key)
            elif self.auth is Auth.METRICS:
                self.holder.state.keys.authorize_metrics(x.headers.authorization)
            await self.handler(x, key)
        except RouterError as e:
            x.send_error(e)
        except ClientGone:
            return
        except Exception as exc:
            log.error("unhandled error on %s %s: %s", x.method, bounded(x.path),
                      bounded(repr(exc)))
            x.send_error(internal_error())


class Models:
    """GET /v1/models and /v1/models/{model}: only the aliases the calling key may use."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder

    async def listing(self, x: Exchange, key: ClientKey | None) -> None:
        assert key is not None
        x.send_json(200, self.holder.state.listing(key))

    async def card(self, x: Exchange, key: ClientKey | None) -> None:
        assert key is not None
        state = self.holder.state
        target = state.models.resolve(x.params["model"], key)  # the server decoded it
        x.send_json(200, msgspec.json.encode(state.card(target.alias)))


class Health:
    """/health (detail), /health/live (the process answers), /health/ready (a model is
    routable)."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder

    async def live(self, x: Exchange, key: ClientKey | None) -> None:
        x.send_json(200, b'{"status":"ok"}')

    async def ready(self, x: Exchange, key: ClientKey | None) -> None:
        self._answer(x, detail=False)

    async def detail(self, x: Exchange, key: ClientKey | None) -> None:
        self._answer(x, detail=True)

    def _answer(self, x: Exchange, detail: bool) -> None:
        state = self.holder.state
        backends = {name: b.health() for name, b in state.backends.items()}
        routable = [
            a
            for a in state.models.aliases
            if backends[state.cfg.models[a].backend].get("status") == "ok"
        ] or [p for p, m in state.cfg.models.items() if backends[m.backend].get("status") == "ok"]
        ready = bool(routable)
        body: dict[str, Any] = {"status": "ok" if ready else "unavailable"}
        if detail:
            body["backends"] = backends
            body["models"] = len(state.cfg.models)
        x.send_json(200 if ready else 503, msgspec.json.encode(body))


async def metrics(x: Exchange, key: ClientKey | None) -> None:
    """GET /metrics in Prometheus text format, summed over all workers."""
    body, content_type = await asyncio.to_thread(exposition)
    x.send(200, body, [("content-type", content_type), *x.rh])
