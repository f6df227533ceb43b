"""Front doors: the client APIs the router speaks, each translated to and from the one chat path.

A door decodes a client body into the backend-facing request body, and per request makes a
Renderer for the backend's answer (whole or streamed) and its errors, in the door's own API.
The OpenAI door renders the chat, completion and embedding answers as they are.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from airouter.backends.base import Endpoint, Reply
from airouter.doors import anthropic, responses
from airouter.doors.anthropic_events import MessagesStream, message_from_chat
from airouter.doors.responses_events import ResponsesStream, response_from_chat
from airouter.errors import RouterError, error_json
from airouter.protocol.fields import parse_object
from airouter.protocol.modes import chunks_from_body
from airouter.protocol.requests import decode
from airouter.protocol.sse import DONE, DONE_EVENT, SSEDecoder, frame


class Renderer(Protocol):
    """One request's rendering of the backend's answer in the client's API."""

    def whole(self, body: bytes) -> bytes:
        """A whole backend answer -> the client's whole answer."""
        ...

    def events(self, reply: Reply, include_usage: bool) -> AsyncIterator[bytes]:
        """The client's stream, SSE-framed, without its end (errors before it starts raise)."""
        ...

    def end(self) -> bytes:
        """The last bytes of a stream that ended well."""
        ...

    def failed(self, err: RouterError) -> bytes:
        """The last bytes of a stream that broke after it started."""
        ...


@dataclass(slots=True)
class Decoded:
    body: dict[str, Any]  # what the backend gets (chat, completion or embedding request)
    model: str | None
    stream: bool
    include_usage: bool
    renderer: Renderer


class FrontDoor(Protocol):
    endpoint: Endpoint  # the backend call it becomes
    label: str  # the `endpoint` label in metrics and the access log
    path: str

    def error_json(self, err: RouterError) -> bytes:
        """The error body in the door's API."""
        ...

    def decode(self, data: bytes) -> Decoded:
        """Raises RouterError (the client's mistake, with its param)."""
        ...


async def _framed(chunks: AsyncIterator[list[bytes]]) -> AsyncIterator[bytes]:
    async for batch in chunks:
        yield frame(batch)


async def _once(items: list[bytes]) -> AsyncIterator[list[bytes]]:
    if items:
        yield items


async def _unframed(sse: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    dec = SSEDecoder()
    async for data in sse:
        payloads = [p for p in dec.feed(data) if p != DONE]
        if payloads:
            yield payloads
    tail = [p for p in dec.close() if p != DONE]
    if tail:
        yield tail


def chat_chunks(reply: Reply, endpoint: Endpoint, include_usage: bool
                ) -> AsyncIterator[list[bytes]]:
    """The backend's answer as batches of chunk payloads, whatever form it came in."""
    if reply.chunks is not None:
        return reply.chunks
    if reply.sse is not None:
        return _unframed(reply.sse)
    assert reply.body is not None
    return _once(chunks_from_body(endpoint, reply.body, include_usage))


class _OpenAIRenderer:
    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def whole(self, body: bytes) -> bytes:
        return body

    def events(self, reply: Reply, include_usage: bool) -> AsyncIterator[bytes]:
        if reply.sse is not None:
            return reply.sse
        return _framed(chat_chunks(reply, self.endpoint, include_usage))

    def end(self) -> bytes:
        return DONE_EVENT

    def failed(self, err: RouterError) -> bytes:
        # Headers are gone: report in-band, as OpenAI does, then end the stream cleanly.
        return b"data: " + error_json(err) + b"\n\n" + DONE_EVENT


class OpenAIDoor:
    """POST /v1/chat/completions, /v1/completions and /v1/embeddings, as they are."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.label = endpoint.value
        self.path = "/v1/" + endpoint.value.replace(".", "/")
        self._renderer = _OpenAIRenderer(endpoint)  # stateless: one for every request

    def error_json(self, err: RouterError) -> bytes:
        return error_json(err)

    def decode(self, data: bytes) -> Decoded:
        body, view = decode(self.endpoint, data)
        opts = getattr(view, "stream_options", None)
        stream = bool(getattr(view, "stream", None))
        return Decoded(body, view.model, stream,
                       bool(stream and opts is not None and opts.include_usage), self._renderer)


def _client_param(err: RouterError, names: dict[str, str]) -> RouterError:
    """A backend blames a field by its chat name: name it as the client sent it."""
    ours = names.get(err.param or "")
    if ours is None:
        return err
    assert err.param is not None
    renamed = copy.copy(err)
    renamed.message = err.message.replace(f"'{err.param}'", f"'{ours}'")
    renamed.param = ours
    return renamed


# Chat request fields -> the Responses / Messages fields they were made from, where they differ.
_RESPONSES_PARAMS = {"max_tokens": "max_output_tokens", "response_format": "text.format",
                     "reasoning_effort": "reasoning.effort", "messages": "input"}
_MESSAGES_PARAMS = {"stop": "stop_sequences", "parallel_tool_calls":
                    "tool_choice.disable_parallel_tool_use"}


class _Translator(Protocol):
    def feed(self, payloads: list[bytes]) -> bytes: ...


async def _translated(t: _Translator, chunks: AsyncIterator[list[bytes]]) -> AsyncIterator[bytes]:
    async for batch in chunks:
        out = t.feed(batch)
        if out:
            yield out


class _ResponsesRenderer:
    __slots__ = ("req", "stream")

    def __init__(self, req: responses.ResponsesRequest) -> None:
        self.req = req
        self.stream: ResponsesStream | None = None

    def whole(self, body: bytes) -> bytes:
        return response_from_chat(self.req, body, self.req.model)

    def events(self, reply: Reply, include_usage: bool) -> AsyncIterator[bytes]:
        self.stream = ResponsesStream(self.req, self.req.model)
        return _translated(self.stream, chat_chunks(reply, Endpoint.CHAT, True))

    def end(self) -> bytes:
        assert self.stream is not None
        return self.stream.end()

    def failed(self, err: RouterError) -> bytes:
        assert self.stream is not None
        return self.stream.fail(err.message)


class ResponsesDoor:
    """POST /v1/responses (OpenAI Responses API, stateless)."""

    endpoint = Endpoint.CHAT
    label = "responses"
    path = "/v1/responses"

    def error_json(self, err: RouterError) -> bytes:
        return error_json(_client_param(err, _RESPONSES_PARAMS))

    def decode(self, data: bytes) -> Decoded:
        chat, req = responses.to_chat(parse_object(data))
        return Decoded(chat, req.model, req.stream, req.stream, _ResponsesRenderer(req))


class _MessagesRenderer:
    __slots__ = ("req", "stream")

    def __init__(self, req: anthropic.MessagesRequest) -> None:
        self.req = req
        self.stream: MessagesStream | None = None

    def whole(self, body: bytes) -> bytes:
        return message_from_chat(self.req, body, self.req.model)

    def events(self, reply: Reply, include_usage: bool) -> AsyncIterator[bytes]:
        self.stream = MessagesStream(self.req, self.req.model)
        return _translated(self.stream, chat_chunks(reply, Endpoint.CHAT, True))

    def end(self) -> bytes:
        assert self.stream is not None
        return self.stream.end()

    def failed(self, err: RouterError) -> bytes:
        return b"event: error\ndata: " + anthropic.error_json(err) + b"\n\n"


class MessagesDoor:
    """POST /v1/messages (Anthropic Messages API)."""

    endpoint = Endpoint.CHAT
    label = "messages"
    path = "/v1/messages"

    def error_json(self, err: RouterError) -> bytes:
        return anthropic.error_json(_client_param(err, _MESSAGES_PARAMS))

    def decode(self, data: bytes) -> Decoded:
        chat, req = anthropic.to_chat(parse_object(data))
        return Decoded(chat, req.model, req.stream, req.stream, _MessagesRenderer(req))
