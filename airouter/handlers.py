"""ASGI endpoints. They speak only to the Backend interface and never branch on backend type."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from airouter.asgi import (
    SSE_HEADERS,
    ClientGone,
    Receive,
    Scope,
    Send,
    read_body,
    send_error,
    send_json,
)
from airouter.auth import ClientKey
from airouter.backends.base import Call, Endpoint, Reply, Target
from airouter.bounds import bounded
from airouter.doors import FrontDoor, OpenAIDoor, Renderer
from airouter.errors import (
    NotFound,
    RouterError,
    ServiceUnavailable,
    internal_error,
)
from airouter.limits import Ticket
from airouter.observability.record import Observer, Record, request_id_var
from airouter.state import State
from airouter.streaming.modes import body_from_chunks

if TYPE_CHECKING:
    from airouter.observability.tracing import Tracer

log = logging.getLogger("airouter")

OPERATION = {
    "chat.completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}

_UNSAFE = re.compile(rb"[^\x20-\x7e]")
_FORWARD = frozenset({b"traceparent", b"tracestate", b"x-request-id"})


class Holder:
    """The live State, and the requests being served (ended cleanly if a shutdown's grace
    period runs out)."""

    state: State

    def __init__(self) -> None:
        self.draining = False
        self.tasks: set[asyncio.Task[Any]] = set()

    def end_all(self) -> None:
        """Grace period over: in-flight requests end now, each with a clean error."""
        self.draining = True
        for t in list(self.tasks):
            t.cancel()


# UUID-shaped (some upstreams, starlette-context behind llama.cpp's server for one, reject
# anything else): a random per-process prefix and a counter, cheaper than uuid4 per request.
_RID_PREFIX = str(uuid.UUID(bytes=os.urandom(16), version=4))[:24]
_rid_counter = itertools.count(int.from_bytes(os.urandom(4)))


def _request_id() -> bytes:
    return f"{_RID_PREFIX}{next(_rid_counter) & 0xFFFFFFFFFFFF:012x}".encode()


class _Headers:
    __slots__ = ("authorization", "api_key", "request_id", "forward")

    def __init__(self, scope: Scope) -> None:
        self.authorization: bytes | None = None
        self.api_key: bytes | None = None
        self.request_id: bytes | None = None
        self.forward: dict[str, str] = {}
        for k, v in scope["headers"]:
            if k == b"authorization":
                self.authorization = v
            elif k == b"api-key" or k == b"x-api-key":
                self.api_key = v
            elif k in _FORWARD:
                if _UNSAFE.search(v):
                    continue  # not printable ASCII: not fit for our headers, logs or gRPC metadata
                if k == b"x-request-id":
                    # Bound what we echo back and log.
                    v = v[:128]
                    self.request_id = v
                self.forward[k.decode()] = v.decode("latin-1")
        if self.request_id is None:
            self.request_id = _request_id()
            self.forward["x-request-id"] = self.request_id.decode()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _DisconnectWatch:
    """Cancels the handler's task when the client goes away, so backend work stops at once."""

    __slots__ = ("_task", "_watcher", "_active")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._active = True
        self._watcher = asyncio.ensure_future(_until_disconnect(receive))
        self._watcher.add_done_callback(self._fire)

    def _fire(self, w: asyncio.Future[None]) -> None:
        if w.cancelled():
            return
        if w.exception() is not None:  # receive() itself failed: retrieved, not a disconnect
            return
        if self._active:
            self._task.cancel()

    @property
    def gone(self) -> bool:
        w = self._watcher
        return w.done() and not w.cancelled() and w.exception() is None

    def stop(self) -> None:
        self._active = False
        self._watcher.cancel()


class CompletionEndpoint:
    """POST /v1/chat/completions, /v1/completions and /v1/embeddings, and the other APIs'
    front doors onto the chat path."""

    def __init__(
        self, holder: Holder, endpoint: Endpoint, observer: Observer,
        door: FrontDoor | None = None,
    ) -> None:
        self.holder = holder
        self.door = door or OpenAIDoor(endpoint)
        self.endpoint = self.door.endpoint
        self.observer = observer
        self.path = self.door.path
        self.error_json = self.door.error_json

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.holder.state
        h = _Headers(scope)
        rid = (h.request_id or b"").decode("latin-1")
        request_id_var.set(rid)
        rh = [(b"x-request-id", h.request_id or b"")]
        rec = Record(rid, "POST", self.path, self.door.label)
        task = asyncio.current_task()
        tasks = self.holder.tasks
        if task is not None:
            tasks.add(task)
        try:
            await self._handle(state, h, rec, rh, receive, send)
        except Exception:
            # A bug, not a client or backend problem: log it, never show a traceback.
            log.exception("request failed")
            rec.status, rec.error = 500, "internal_error"
            if not rec.started:
                with contextlib.suppress(Exception):
                    await send_error(send, internal_error(), rh, self.error_json)
        finally:
            tasks.discard(task)
            self.observer.finish(rec)

    async def _handle(
        self,
        state: State,
        h: _Headers,
        rec: Record,
        rh: list[tuple[bytes, bytes]],
        receive: Receive,
        send: Send,
    ) -> None:
        try:
            key = state.keys.authenticate(h.authorization, h.api_key)
            rec.key = key.name
            data = await read_body(receive, state.body_limit, state.body_timeout)
            req = self.door.decode(data)
            target = state.models.resolve(req.model, key)
            ticket = await state.limits.admit(key.name, target, req.body)
        except RouterError as e:
            rec.status, rec.error = e.status, e.code or e.type
            await send_error(send, e, rh, self.error_json)
            return
        except ClientGone:
            rec.status, rec.error = 499, "client_gone"
            return
        rh += ticket.headers
        rec.alias, rec.label, rec.backend = bounded(target.alias), target.label, target.backend.name
        body, stream = req.body, req.stream
        call = Call(
            self.endpoint,
            target,
            _for_target(self.endpoint, body, target),
            stream,
            include_usage=req.include_usage,
            headers=h.forward,
        )
        rec.call = call
        tracer = self.observer.tracer
        if tracer is not None:
            start_spans(tracer, rec, call, h.forward)
        self.observer.started(rec)
        watch = _DisconnectWatch(receive)
        try:
            rec.status = await self._serve(
                call, body, send, rh, rec, key, watch, req.renderer, ticket
            )
        except asyncio.CancelledError:
            if rec.complete:
                # The answer went out in full; only its clean-up was cut short (the client left
                # after the last byte, or the server is stopping): it is logged as what it was.
                rec.status = 200
            if not (watch.gone or self.holder.draining):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if rec.complete:
                pass
            elif watch.gone:
                rec.status, rec.error = 499, "client_disconnected"
                log.info("client disconnected")
            else:
                rec.status, rec.error = 503, "shutdown"
                if not rec.started:
                    await send_error(send, _shutting_down(), rh, self.error_json)
        finally:
            watch.stop()
            ticket.release(call.stats)

    async def _serve(
        self,
        call: Call,
        client_body: dict[str, Any],
        send: Send,
        rh: list[tuple[bytes, bytes]],
        rec: Record,
        key: ClientKey,
        watch: _DisconnectWatch,
        renderer: Renderer,
        ticket: Ticket,
    ) -> int:
        try:
            reply = await self._open(call, client_body, rec, key)
        except RouterError as e:
            rec.error = e.code or e.type
            await send_error(send, e, rh, self.error_json)
            return e.status
        try:
            if call.stream:
                return await self._stream(call, reply, send, rh, rec, renderer, ticket)
            return await self._whole(reply, send, rh, rec, renderer, ticket)
        finally:
            if not watch.gone:
                # The answer is complete: a disconnect now must not cancel the clean-up.
                watch.stop()
            await reply.aclose()

    async def _open(
        self, call: Call, client_body: dict[str, Any], rec: Record, key: ClientKey
    ) -> Reply:
        """Open the call on its target; when every node of it is down, on its fallbacks."""
        try:
            return await call.target.backend.open(call)
        except RouterError as e:
            fallbacks = call.target.model.fallbacks
            if not (e.retryable and fallbacks):
                raise
            first = e
        state = self.holder.state
        for alias in fallbacks:
            target = state.models.lookup(alias)
            if target is None or not key.allows(target.alias):
                continue
            log.warning(
                "model %s unavailable (%s); falling back to %s",
                bounded(call.target.alias),
                bounded(first.message),
                alias,
            )
            call.target = target
            rec.alias, rec.label = bounded(target.alias), target.label
            rec.backend = target.backend.name
            # Each target starts from the client's request, with its own defaults.
            call.body = _for_target(self.endpoint, client_body, target)
            try:
                return await target.backend.open(call)
            except RouterError as e:
                if not e.retryable:
                    raise
        raise first

    async def _whole(
        self, reply: Reply, send: Send, rh: list[tuple[bytes, bytes]], rec: Record,
        renderer: Renderer, ticket: Ticket,
    ) -> int:
        try:
            if reply.body is not None:
                body = reply.body
            else:
                assert reply.chunks is not None
                body = await body_from_chunks(self.endpoint, reply.chunks)
            body = renderer.whole(body)
        except RouterError as e:
            reply.fault = e
            rec.error = e.code or e.type
            await send_error(send, e, rh, self.error_json)
            return e.status
        await ticket.settle(rec.call.stats if rec.call else None)
        rec.started = True
        await send_json(send, 200, body, rh)
        rec.complete = True
        return 200

    async def _stream(
        self, call: Call, reply: Reply, send: Send, rh: list[tuple[bytes, bytes]], rec: Record,
        renderer: Renderer, ticket: Ticket,
    ) -> int:
        try:
            events = renderer.events(reply, call.include_usage)
        except RouterError as e:
            rec.error = e.code or e.type
            await send_error(send, e, rh, self.error_json)
            return e.status
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + rh})
        rec.started = True
        try:
            async for data in events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                rec.chunk_sent()
                ticket.chunk(data)
            tail = renderer.end()
        except RouterError as e:
            # Headers are gone: report in-band, in the client API's way, then end cleanly.
            rec.error, rec.broken = e.code or e.type, e.status
            reply.fault = e
            tail = renderer.failed(e)
        except asyncio.CancelledError:
            if not self.holder.draining:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            rec.error, rec.broken = "shutdown", 503
            tail = renderer.failed(_shutting_down())
        except OSError:
            raise
        except Exception:
            log.exception("stream failed")
            rec.error, rec.broken = "internal_error", 500
            tail = renderer.failed(internal_error())
        await ticket.settle(call.stats)
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        rec.complete = True
        return 200


def _for_target(endpoint: Endpoint, body: dict[str, Any], target: Target) -> dict[str, Any]:
    """The request as `target` gets it: the client's body plus the model's default max_tokens
    (a copy when one is added, so the client's body stays as sent)."""
    default_max = target.model.max_tokens
    if (default_max is not None and endpoint is not Endpoint.EMBEDDINGS
            and body.get("max_tokens") is None and body.get("max_completion_tokens") is None):
        return {**body, "max_tokens": default_max}
    return body


def _shutting_down() -> RouterError:
    return ServiceUnavailable(
        "The server is shutting down; retry on another instance.",
        code="shutting_down",
        headers={"Retry-After": "1"},
    )


def start_spans(tracer: Tracer, rec: Record, call: Call, forward: dict[str, str]) -> None:
    """A server span for the request and a client span for the backend call (GenAI semconv)."""
    op = OPERATION[call.endpoint.value]
    body = call.body
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
    backend = call.target.backend
    client_attrs = {
        **attrs,
        "gen_ai.request.model": bounded(call.target.backend_model),
        "gen_ai.provider.name": backend.provider,
        "airouter.backend": backend.name,
    }
    client_attrs.pop("url.path")
    client_attrs.pop("http.request.method")
    rec.client_span = tracer.client_span(
        rec.span, f"{op} {client_attrs['gen_ai.request.model']}", client_attrs
    )
    tracer.inject(rec.client_span, forward)


class ModelsEndpoint:
    """GET /v1/models and /v1/models/{id}: only the aliases the calling key may use."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.holder.state
        h = _Headers(scope)
        rh = [(b"x-request-id", h.request_id or b"")]
        try:
            key = state.keys.authenticate(h.authorization, h.api_key)
            model_id = scope.get("path_params", {}).get("model_id")
            if model_id is None:
                await send_json(send, 200, state.listing(key), rh)
                return
            target = state.models.resolve(model_id, key)
            await send_json(send, 200, msgspec.json.encode(state.card(target.alias)), rh)
        except RouterError as e:
            await send_error(send, e, rh)


class HealthEndpoint:
    """/health (detail), /health/live (the process answers), /health/ready (a model is routable)."""

    def __init__(self, holder: Holder, kind: str) -> None:
        self.holder = holder
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.holder.state
        if self.kind == "live":
            await send_json(send, 200, b'{"status":"ok"}')
            return
        backends = {name: b.health() for name, b in state.backends.items()}
        routable = [
            a
            for a in state.models.aliases
            if backends[state.cfg.models[a].backend].get("status") == "ok"
        ] or [p for p, m in state.cfg.models.items() if backends[m.backend].get("status") == "ok"]
        ready = bool(routable)
        body: dict[str, Any] = {"status": "ok" if ready else "unavailable"}
        if self.kind == "detail":
            body["backends"] = backends
            body["models"] = len(state.cfg.models)
        await send_json(send, 200 if ready else 503, msgspec.json.encode(body))


def error_app(err_factory: Callable[[], RouterError]) -> Callable[..., Any]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(ClientGone):
            await send_error(send, err_factory())

    return app


def not_found(path: str) -> NotFound:
    return NotFound(
        f"Unknown request URL: {path}. Please check the URL and method.", code="unknown_url"
    )
