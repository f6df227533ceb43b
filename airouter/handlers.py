"""The endpoints. They speak only to the Backend interface and never branch on backend type."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from airouter.auth import ClientKey
from airouter.backends.base import Call, Endpoint, Reply
from airouter.bounds import bounded
from airouter.disconnect import DisconnectWatch
from airouter.doors.door import FrontDoor, OpenAIDoor, Renderer
from airouter.errors import RouterError, internal_error, shutting_down
from airouter.identity import RequestHeaders
from airouter.lifecycle import Holder
from airouter.limits import Ticket
from airouter.observability.record import Observer, Record, request_id_var
from airouter.observability.spans import start_spans
from airouter.protocol.modes import body_from_chunks
from airouter.routing import open_call, request_for
from airouter.rsgi import (
    SSE_HEADERS,
    ClientGone,
    Headers,
    HTTPProtocol,
    ProtocolClosed,
    Scope,
    read_body,
    send_error,
    send_json,
)
from airouter.state import State

log = logging.getLogger("airouter")


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

    async def __call__(self, scope: Scope, proto: HTTPProtocol) -> None:
        state = self.holder.state
        h = RequestHeaders(scope)
        rid = h.request_id
        request_id_var.set(rid)
        rh = [("x-request-id", rid)]
        rec = Record(rid, "POST", self.path, self.door.label)
        task = asyncio.current_task()
        assert task is not None  # the server runs each request as an asyncio task
        tasks = self.holder.tasks
        tasks.add(task)
        try:
            await self._handle(state, h, rec, rh, proto, task)
        except Exception:
            # A bug, not a client or backend problem: log it, never show a traceback.
            log.exception("request failed")
            rec.status, rec.error = 500, "internal_error"
            if not rec.started:
                with contextlib.suppress(Exception):
                    send_error(proto, internal_error(), rh, self.error_json)
        finally:
            tasks.discard(task)
            self.observer.finish(rec)

    async def _handle(
        self,
        state: State,
        h: RequestHeaders,
        rec: Record,
        rh: Headers,
        proto: HTTPProtocol,
        task: asyncio.Task[Any],
    ) -> None:
        try:
            key = state.keys.authenticate(h.authorization, h.api_key)
            rec.key = key.name
            data = await read_body(proto, state.body_limit, state.body_timeout, h.length)
            req = self.door.decode(data)
            target = state.models.resolve(req.model, key)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("key %s: model %s is alias %s: backend %s, model %s", key.name,
                          bounded(str(req.model)), target.label, target.backend.name,
                          bounded(target.backend_model))
            ticket = await state.limits.admit(key.name, target, req.body)
        except RouterError as e:
            rec.status, rec.error = e.status, e.code or e.type
            send_error(proto, e, rh, self.error_json)
            return
        except ClientGone:
            rec.status, rec.error = 499, "client_gone"
            return
        rh += ticket.headers
        body, stream = req.body, req.stream
        sent = request_for(self.endpoint, body, target)
        call = Call(
            self.endpoint, target, sent, stream, include_usage=req.include_usage,
            headers=h.forward,
        )
        _serve_as(rec, call)
        tracer = self.observer.tracer
        if tracer is not None:  # adds the trace context to the call's forwarded headers
            start_spans(tracer, rec, self.endpoint, target, sent, h.forward)
        self.observer.started(rec)
        watch = DisconnectWatch(proto, task)
        try:
            rec.status = await self._serve(
                call, body, proto, rh, rec, key, watch, req.renderer, ticket
            )
        except asyncio.CancelledError:
            if rec.complete:
                # The answer went out in full; only its clean-up was cut short (the client left
                # after the last byte, or the server is stopping): it is logged as what it was.
                rec.status = 200
            if not (watch.gone or self.holder.draining):
                raise
            task.uncancel()
            if rec.complete:
                pass
            elif watch.gone:
                rec.status = _client_left(rec)
            else:
                rec.status, rec.error = 503, "shutdown"
                if not rec.started:
                    send_error(proto, shutting_down(), rh, self.error_json)
        finally:
            watch.stop()
            ticket.release(call.stats)

    async def _serve(
        self,
        call: Call,
        client_body: dict[str, Any],
        proto: HTTPProtocol,
        rh: Headers,
        rec: Record,
        key: ClientKey,
        watch: DisconnectWatch,
        renderer: Renderer,
        ticket: Ticket,
    ) -> int:
        try:
            reply = await open_call(
                self.holder.state.models, call, client_body, key, lambda c: _serve_as(rec, c)
            )
        except RouterError as e:
            rec.error = e.code or e.type
            send_error(proto, e, rh, self.error_json)
            return e.status
        try:
            if call.stream:
                return await self._stream(call, reply, proto, rh, rec, renderer, ticket)
            return await self._whole(reply, proto, rh, rec, renderer, ticket)
        finally:
            if not watch.gone:
                # The answer is complete: a disconnect now must not cancel the clean-up.
                watch.stop()
            await reply.aclose()

    async def _whole(
        self, reply: Reply, proto: HTTPProtocol, rh: Headers, rec: Record,
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
            reply.fault = e.with_traceback(None)
            rec.error = e.code or e.type
            send_error(proto, e, rh, self.error_json)
            return e.status
        await ticket.settle(rec.call.stats if rec.call else None)
        rec.started = True
        send_json(proto, 200, body, rh)
        rec.complete = True
        return 200

    async def _stream(
        self, call: Call, reply: Reply, proto: HTTPProtocol, rh: Headers, rec: Record,
        renderer: Renderer, ticket: Ticket,
    ) -> int:
        try:
            events = renderer.events(reply, call.include_usage)
        except RouterError as e:
            rec.error = e.code or e.type
            send_error(proto, e, rh, self.error_json)
            return e.status
        out = proto.response_stream(200, SSE_HEADERS + rh)
        return await self._pump(out.send_bytes, events, reply, rec, renderer, ticket)

    async def _pump(
        self, send: Callable[[bytes], Awaitable[None]], events: AsyncIterator[bytes],
        reply: Reply, rec: Record, renderer: Renderer, ticket: Ticket,
    ) -> int:
        rec.started = True
        try:
            async for data in events:
                await send(data)
                rec.chunk_sent()
                ticket.chunk(data)
            tail = renderer.end()
        except RouterError as e:
            # Headers are gone: report in-band, in the client API's way, then end cleanly.
            rec.error, rec.broken = e.code or e.type, e.status
            # Without its traceback: that would keep this frame, and so the stream, alive, and
            # an RSGI stream ends only when nothing refers to it any more.
            reply.fault = e.with_traceback(None)
            tail = renderer.failed(e)
        except asyncio.CancelledError:
            if not self.holder.draining:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            rec.error, rec.broken = "shutdown", 503
            tail = renderer.failed(shutting_down())
        except ProtocolClosed:
            return _client_left(rec)
        except Exception:
            log.exception("stream failed")
            rec.error, rec.broken = "internal_error", 500
            tail = renderer.failed(internal_error())
        await ticket.settle(rec.call.stats if rec.call else None)
        try:
            await send(tail)
        except ProtocolClosed:
            return _client_left(rec)
        rec.complete = True
        return 200


def _client_left(rec: Record) -> int:
    """The client went away (a write or the disconnect watch found it gone)."""
    rec.error = "client_disconnected"
    log.info("client disconnected")
    return 499


def _serve_as(rec: Record, call: Call) -> None:
    """`call` serves the request from now on: the first target's, or a fallback's."""
    rec.call = call
    rec.alias, rec.label = bounded(call.target.alias), call.target.label
    rec.backend = call.target.backend.name


class ModelsEndpoint:
    """GET /v1/models and /v1/models/{id}: only the aliases the calling key may use."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder

    async def __call__(self, scope: Scope, proto: HTTPProtocol) -> None:
        state = self.holder.state
        h = RequestHeaders(scope)
        rh = [("x-request-id", h.request_id)]
        try:
            key = state.keys.authenticate(h.authorization, h.api_key)
            if scope.path == "/v1/models":
                send_json(proto, 200, state.listing(key), rh)
                return
            model_id = scope.path.removeprefix("/v1/models/")  # the server decoded it
            target = state.models.resolve(model_id, key)
            send_json(proto, 200, msgspec.json.encode(state.card(target.alias)), rh)
        except RouterError as e:
            send_error(proto, e, rh)


class HealthEndpoint:
    """/health (detail), /health/live (the process answers), /health/ready (a model is routable)."""

    def __init__(self, holder: Holder, kind: str) -> None:
        self.holder = holder
        self.kind = kind

    async def __call__(self, scope: Scope, proto: HTTPProtocol) -> None:
        state = self.holder.state
        if self.kind == "live":
            send_json(proto, 200, b'{"status":"ok"}')
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
        send_json(proto, 200 if ready else 503, msgspec.json.encode(body))
