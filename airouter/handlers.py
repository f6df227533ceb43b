"""The completion endpoints: every API's path to a model. They speak only to the Backend
interface and the Exchange, and never branch on backend type or server interface."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from airouter.backends.base import Call, Endpoint, Finishing, Reply
from airouter.bounds import bounded
from airouter.disconnect import DisconnectWatch
from airouter.doors.door import FrontDoor, OpenAIDoor
from airouter.errors import RouterError, internal_error, shutting_down
from airouter.exchange import ClientGone, Exchange, Send
from airouter.lifecycle import Holder
from airouter.observability.record import Observer, Record, request_id_var
from airouter.observability.spans import start_spans
from airouter.protocol.modes import body_from_chunks
from airouter.routing import open_call, request_for

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
        self.render = self.door.error_json

    async def __call__(self, x: Exchange) -> None:
        rid = x.headers.request_id
        request_id_var.set(rid)
        x.record = rec = Record(rid, "POST", self.path, self.door.label)
        task = asyncio.current_task()
        assert task is not None  # the server runs each request as an asyncio task
        tasks = self.holder.tasks
        tasks.add(task)
        try:
            await self._handle(x, rec, task)
        except Exception:
            # A bug, not a client or backend problem: log it, never show a traceback.
            log.exception("request failed")
            rec.status, rec.error = 500, "internal_error"
            if not rec.started:
                with contextlib.suppress(Exception):
                    x.send_error(internal_error())
        finally:
            tasks.discard(task)
            self.observer.finish(rec)

    async def _handle(self, x: Exchange, rec: Record, task: asyncio.Task[Any]) -> None:
        state = self.holder.state
        h = x.headers
        try:
            x.key = key = state.keys.authenticate(h.authorization, h.api_key)
            rec.key = key.name
            data = await x.body(state.body_limit, state.body_timeout)
            req = self.door.decode(data)
            target = state.models.resolve(req.model, key)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("key %s: model %s is alias %s: backend %s, model %s", key.name,
                          bounded(str(req.model)), target.label, target.backend.name,
                          bounded(target.backend_model))
            x.ticket = ticket = await state.limits.admit(key.name, target, req.body)
        except RouterError as e:
            rec.status, rec.error = e.status, e.code or e.type
            x.send_error(e)
            return
        except ClientGone:
            rec.status, rec.error = 499, "client_gone"
            return
        x.rh += ticket.headers
        x.renderer = req.renderer
        sent = request_for(self.endpoint, req.body, target)
        call = Call(
            self.endpoint, target, sent, req.stream, include_usage=req.include_usage,
            headers=h.forward,
        )
        _serve_as(rec, call)
        tracer = self.observer.tracer
        if tracer is not None:  # adds the trace context to the call's forwarded headers
            start_spans(tracer, rec, self.endpoint, target, sent, h.forward)
        self.observer.started(rec)
        x.watch = watch = DisconnectWatch(x, task)
        try:
            rec.status = await self._serve(x, call, req.body)
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
                    x.send_error(shutting_down())
        finally:
            watch.stop()
            ticket.release(call.stats)

    async def _serve(self, x: Exchange, call: Call, client_body: dict[str, Any]) -> int:
        rec = x.record
        try:
            reply = await open_call(
                self.holder.state.models, call, client_body, x.key, lambda c: _serve_as(rec, c)
            )
        except RouterError as e:
            rec.error = e.code or e.type
            x.send_error(e)
            return e.status
        try:
            if call.stream:
                return await self._stream(x, call, reply)
            return await self._whole(x, reply)
        finally:
            if not x.watch.gone:
                # The answer is complete: a disconnect now must not cancel the clean-up.
                x.watch.stop()
            await reply.aclose()

    async def _whole(self, x: Exchange, reply: Reply) -> int:
        rec = x.record
        try:
            if reply.body is not None:
                body = reply.body
            else:
                assert reply.chunks is not None
                body = await body_from_chunks(self.endpoint, reply.chunks)
            body = x.renderer.whole(body)
        except RouterError as e:
            reply.fault = e.with_traceback(None)
            rec.error = e.code or e.type
            x.send_error(e)
            return e.status
        await x.ticket.settle(rec.call.stats if rec.call else None)
        rec.started = True
        x.send_json(200, body)
        rec.complete = True
        return 200

    async def _stream(self, x: Exchange, call: Call, reply: Reply) -> int:
        try:
            events = x.renderer.events(reply, call.include_usage)
        except RouterError as e:
            x.record.error = e.code or e.type
            x.send_error(e)
            return e.status
        return await self._pump(x, x.send_sse(), events, reply)

    async def _pump(
        self, x: Exchange, send: Send, events: AsyncIterator[bytes], reply: Reply
    ) -> int:
        rec, renderer, ticket = x.record, x.renderer, x.ticket
        rec.started = True
        # The last events go out with the stream's end, in one write, when the stream can tell
        # they are the last (a whole stream in one upstream read: one send instead of two).
        ending = cast("Finishing", events) if hasattr(events, "finished") else None
        held = b""
        try:
            async for data in events:
                if held:
                    await send(held)
                    held = b""
                if ending is not None and ending.finished:
                    held = data
                else:
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
        except x.closed:
            return _client_left(rec)
        except Exception:
            log.exception("stream failed")
            rec.error, rec.broken = "internal_error", 500
            tail = renderer.failed(internal_error())
        await ticket.settle(rec.call.stats if rec.call else None)
        try:
            await send(held + tail if held else tail)
        except x.closed:
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
