"""A deterministic OpenAI-compatible upstream for exact assertions in tests.

It runs aiohttp.web in a background thread with its own event loop, so tests using either the
synchronous `openai` client or their own event loop can talk to it. The request's `model`
picks the behaviour (see MODELS); every request is recorded in `FakeUpstream.requests`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CREATED = 1_700_000_000
MODEL_SUFFIX = "-0613"  # reply `model` = requested model + this, so alias rewrites are visible
SYSTEM_FINGERPRINT = "fp_fake"
PIECE_CHARS = 4  # streamed content is cut into pieces of this many characters
SPLIT_SUFFIX = " — café 😀"  # appended to fake-split replies: multi-byte UTF-8 to split
SPLIT_SIZES = (1, 3, 2, 7, 5, 1, 4, 6)  # fake-split writes the stream in pieces of these sizes
EMBED_DIMS = 8
SLOW_DELAY = 0.3
TICK_INTERVAL = 0.05
HANG_SECONDS = 60.0
DISCONNECT_SECONDS = 30.0
MAX_BODY = 64 * 1024 * 1024  # aiohttp's default (1 MiB) would answer 413 before recording

MODELS = (
    "fake-echo",
    "fake-embed",
    "fake-split",
    "fake-tricky",
    "fake-slow",
    "fake-die",
    "fake-hang",
    "fake-disconnect",
    "fake-nostream",
    "fake-error-400",
    "fake-error-401",
    "fake-error-404",
    "fake-error-429",
    "fake-error-500",
    "fake-error-503",
    "fake-error-text",
    "fake-bad-json",
    "fake-tools",
    "fake-traceback",
    "fake-bad-event",
    "fake-truncated",
    "fake-stall",
)

_ERROR_MODEL = re.compile(r"fake-error-(\d{3})")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_BODY = web.RequestKey("fake_body", object)
_SSE = web.RequestKey("fake_sse", web.StreamResponse)
_COMPLETE = web.RequestKey("fake_complete", bool)
_INVALID = object()

Json = dict[str, Any]
Event = tuple[str, str, float]


# --- request helpers ----------------------------------------------------------------------


def words(text: str) -> int:
    return len(text.split())


def content_text(content: object) -> str:
    """A message's text: the string itself, or its text parts joined with single spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and "text" in p]
        return " ".join(t for t in texts if isinstance(t, str))
    return ""


def last_user_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def prompt_texts(prompt: object) -> list[str]:
    """Each prompt of a completions request as text (token-id lists as space-joined ids)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [" ".join(map(str, prompt))]
    if isinstance(prompt, list):
        return [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt]
    return [""]


def truncate(text: str, limit: object) -> tuple[str, str]:
    """Cut `text` to `limit` words: (text, finish_reason)."""
    parts = text.split()
    if isinstance(limit, int) and len(parts) > limit:
        return " ".join(parts[:limit]), "length"
    return text, "stop"


def pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def fake_embedding(item: str | list[int], dims: int = EMBED_DIMS) -> list[float]:
    """A deterministic vector for one input; values are exact in float32 (k / 32768)."""
    key = item if isinstance(item, str) else "tokens:" + ",".join(map(str, item))
    digest = b""
    block = key.encode()
    while len(digest) < 2 * dims:
        block = hashlib.sha256(block).digest()
        digest += block
    ints = struct.unpack(f"<{dims}h", digest[: 2 * dims])
    return [i / 32768 for i in ints]


def embedding_inputs(value: object) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return [value]
    if isinstance(value, list):
        return list(value)
    return []


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> Json:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = error_body(message, type_, code, param)
    return web.json_response(body, status=status, headers=headers)


def sse(obj: Json | str, eol: str = "\n", prefix: str = "data: ") -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"{prefix}{data}{eol}{eol}".encode()


# --- replies ------------------------------------------------------------------------------


@dataclass
class Reply:
    """One answer in both forms: the non-streamed body and its stream chunks.

    `chunks` holds (kind, chunk) with kind one of "role", "content", "finish", "usage";
    `tick(text)` builds one extra content chunk (for the endless fake-disconnect stream).
    """

    body: Json
    chunks: list[tuple[str, Json]] = field(default_factory=list)
    tick: Callable[[str], Json] = lambda text: {}


def _int_field(req: Json, key: str, default: int) -> int:
    value = req.get(key)
    return value if isinstance(value, int) else default


def _usage(prompt: int, completion: int) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _stream_tail(base: Json, obj: str, usage: Json, include_usage: bool) -> list[tuple[str, Json]]:
    if not include_usage:
        return []
    return [("usage", {**base, "object": obj, "choices": [], "usage": usage})]


def chat_reply(req: Json, text: str) -> Reply:
    n = _int_field(req, "n", 1)
    limit = req.get("max_completion_tokens", req.get("max_tokens"))
    text, finish = truncate(text, limit)
    messages = req["messages"] if isinstance(req.get("messages"), list) else []
    prompt = sum(words(content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    usage = _usage(prompt, words(text) * n)
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": "chatcmpl-fake",
        "created": CREATED,
        "model": req["model"] + MODEL_SUFFIX,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    message = {"role": "assistant", "content": text, "refusal": None}
    body = {
        **base,
        "object": "chat.completion",
        "usage": usage,
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(n)
        ],
    }

    def chunk(index: int, delta: Json, finish_reason: str | None = None) -> Json:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        out = {**base, "object": "chat.completion.chunk", "choices": [choice]}
        return {**out, "usage": None} if include_usage else out

    chunks = [("role", chunk(i, {"role": "assistant", "content": ""})) for i in range(n)]
    chunks += [("content", chunk(i, {"content": p})) for p in pieces(text) for i in range(n)]
    chunks += [("finish", chunk(i, {}, finish)) for i in range(n)]
    chunks += _stream_tail(base, "chat.completion.chunk", usage, include_usage)
    return Reply(body, chunks, lambda t: chunk(0, {"content": t}))


def completion_reply(req: Json, text: str) -> Reply:
    n = _int_field(req, "n", 1)
    text, finish = truncate(text, req.get("max_tokens"))
    usage = _usage(sum(words(p) for p in prompt_texts(req.get("prompt"))), words(text) * n)
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": "cmpl-fake",
        "created": CREATED,
        "model": req["model"] + MODEL_SUFFIX,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    body = {
        **base,
        "object": "text_completion",
        "usage": usage,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish} for i in range(n)
        ],
    }

    def chunk(index: int, piece: str, finish_reason: str | None = None) -> Json:
        choice = {"index": index, "text": piece, "logprobs": None, "finish_reason": finish_reason}
        out = {**base, "object": "text_completion", "choices": [choice]}
        return {**out, "usage": None} if include_usage else out

    chunks = [("content", chunk(i, p)) for p in pieces(text) for i in range(n)]
    chunks += [("finish", chunk(i, "", finish)) for i in range(n)]
    chunks += _stream_tail(base, "text_completion", usage, include_usage)
    return Reply(body, chunks, lambda t: chunk(0, t))


def embeddings_body(req: Json) -> Json:
    inputs = embedding_inputs(req.get("input"))
    dims = _int_field(req, "dimensions", EMBED_DIMS)
    as_base64 = req.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        vector = fake_embedding(item, dims)
        encoded: object = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    prompt = sum(words(i) if isinstance(i, str) else len(i) for i in inputs)
    return {
        "object": "list",
        "data": data,
        "model": req["model"] + MODEL_SUFFIX,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def models_body() -> Json:
    return {"object": "list", "data": [model_object(m) for m in MODELS]}


def model_object(model_id: str) -> Json:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": "fake"}


def split_stream(chunks: list[tuple[str, Json]]) -> bytes:
    """The whole fake-split stream: mixed \\n / \\r\\n endings, comments, `data:` without space."""
    out = bytearray(b": keep-alive\n\n")
    for i, (_, chunk) in enumerate(chunks):
        if i % 3 == 2:
            out += b": keep-alive\r\n\r\n"
        out += sse(chunk, eol="\r\n" if i % 2 else "\n", prefix="data:" if i % 4 == 3 else "data: ")
    out += sse("[DONE]", eol="\r\n")
    return bytes(out)


def split_points(data: bytes) -> Iterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        size = SPLIT_SIZES[i % len(SPLIT_SIZES)]
        yield data[pos : pos + size]
        pos, i = pos + size, i + 1


TRACEBACK = (
    'Traceback (most recent call last):\n  File "/srv/engine/worker.py", line 88, in run\n'
    "    out = model.generate(batch)\nRuntimeError: CUDA error: an illegal memory access"
)
BAD_EVENT = "{not json, from /srv/engine/sse.py"
# Well-formed JSON, but not UTF-8 inside a string.
BAD_UTF8_EVENT = b'{"object":"chat.completion.chunk","choices":[{"delta":{"content":"\xc3\x28"}}]}'
# fake-stall stalls at one of these points for STALL_SECONDS (a client may leave there):
# before the response headers, after them, after the first event, before [DONE].
STALL_POINTS = ("headers", "open", "first", "done")
STALL_SECONDS = 30.0


# --- the server ---------------------------------------------------------------------------

Handler = Callable[[web.Request, str, Json], Awaitable[web.StreamResponse]]
WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeUpstream:
    """`with FakeUpstream() as up:` serves on `up.url` ("http://127.0.0.1:PORT/v1").

    `requests` and `events` are snapshots, safe to read from any thread. Events are
    (name, model, time.monotonic()): "received" for every POST with a model, "started" when
    fake-disconnect sent its first tick, "closed" when a handler saw its client go away,
    "aborted" when fake-die cut the connection.
    """

    def __init__(self, host: str = "127.0.0.1", *, models_wait_idle: bool = False,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.tls = tls  # serve HTTPS with this context
        # As llama.cpp's server does: GET /v1/models answers only when no generation runs.
        self.models_wait_idle = models_wait_idle
        self._generating = 0
        self._idle: asyncio.Event | None = None
        self.port = 0
        self._cond = threading.Condition()
        self._requests: list[Json] = []
        self._events: list[Event] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._transports: set[asyncio.Transport] = set()
        self._closing = False

    # -- public, thread-side ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + "/v1"

    @property
    def requests(self) -> list[Json]:
        with self._cond:
            return list(self._requests)

    @property
    def events(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def clear(self) -> None:
        with self._cond:
            self._requests.clear()
            self._events.clear()

    def wait_event(self, name: str, timeout: float = 5.0, model: str | None = None) -> float:
        """Time of the first event `name` (for `model` if given); TimeoutError if none comes."""

        def find() -> float | None:
            for ev_name, ev_model, t in self._events:
                if ev_name == name and model in (None, ev_model):
                    return t
            return None

        with self._cond:
            if self._cond.wait_for(lambda: find() is not None, timeout):
                return find()  # type: ignore[return-value]
            raise TimeoutError(f"no event {name!r} within {timeout}s; got {self._events}")

    def wait_requests(self, count: int, timeout: float = 5.0) -> list[Json]:
        """Wait until at least `count` requests were recorded; return them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"{len(self._requests)} requests after {timeout}s, not {count}")
            return list(self._requests)

    def start(self) -> FakeUpstream:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="fake-upstream", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- loop-side lifecycle ---------------------------------------------------------------

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
            self._loop = loop
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            failure.append(exc)
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _start(self) -> None:
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/models/{model}", self._get_model)
        for endpoint in ("chat/completions", "completions", "embeddings"):
            app.router.add_post(f"/v1/{endpoint}", self._post_handler(endpoint))
        app.router.add_route("*", "/{tail:.*}", self._unknown_route)
        # handler_cancellation: a client disconnect cancels the handler at once (aiohttp >= 3.9).
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock, ssl_context=self.tls).start()
        self._runner = runner

    async def _shutdown(self) -> None:
        self._closing = True
        for transport in list(self._transports):
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- recording -------------------------------------------------------------------------

    def _event(self, name: str, model: str) -> None:
        with self._cond:
            self._events.append((name, model, time.monotonic()))
            self._cond.notify_all()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: WebHandler) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if request.transport is not None:
            self._transports.add(request.transport)
        try:
            raw = await request.read()
            request[_BODY] = _parse(raw)
            record = {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": raw,
                "json": None if request[_BODY] is _INVALID else request[_BODY],
                "time": time.monotonic(),
            }
            with self._cond:
                self._requests.append(record)
                self._cond.notify_all()
            return await handler(request)
        finally:
            self._tasks.discard(task)
            if request.transport is not None:
                self._transports.discard(request.transport)

    # -- routes ----------------------------------------------------------------------------

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        if self.models_wait_idle and self._idle is not None:
            await self._idle.wait()
        return web.json_response(models_body())

    async def _get_model(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        if model not in MODELS:
            return _model_not_found(model)
        return web.json_response(model_object(model))

    async def _unknown_route(self, request: web.Request) -> web.StreamResponse:
        message = f"Invalid URL ({request.method} {request.path})"
        return error_response(404, message, "invalid_request_error", "unknown_url")

    def _post_handler(self, endpoint: str) -> WebHandler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._post(request, endpoint)

        return handle

    async def _post(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            return error_response(400, message, "invalid_request_error", "invalid_json")
        model = body.get("model")
        if not isinstance(model, str):
            message = "you must provide a model parameter"
            return error_response(400, message, "invalid_request_error", None, param="model")
        self._event("received", model)
        handler = self._pick(endpoint, model)
        if handler is None:
            return _model_not_found(model)
        self._generating += 1
        assert self._idle is not None
        self._idle.clear()
        try:
            return await handler(request, endpoint, body)
        except _Aborted:
            self._event("aborted", model)
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            if not self._closing and not request.get(_COMPLETE):
                self._event("closed", model)
            raise
        except ConnectionError:
            if not request.get(_COMPLETE):
                self._event("closed", model)
            # Hand back the half-sent stream: aiohttp then drops the connection quietly.
            if _SSE in request:
                return request[_SSE]
            raise
        finally:
            self._generating -= 1
            if not self._generating:
                self._idle.set()

    def _pick(self, endpoint: str, model: str) -> Handler | None:
        if match := _ERROR_MODEL.fullmatch(model):
            status = int(match.group(1))
            return lambda request, endpoint, body: _fake_error(status)
        common: dict[str, Handler] = {
            "fake-error-text": _error_text,
            "fake-bad-json": _bad_json,
            "fake-hang": self._hang,
            "fake-die": self._die,
            "fake-traceback": _traceback,
        }
        if model in common:
            return common[model]
        if endpoint == "embeddings":
            return _embeddings if model in ("fake-embed", "fake-echo") else None
        generation: dict[str, Handler] = {
            "fake-echo": self._echo,
            "fake-split": self._split,
            "fake-tricky": self._tricky,
            "fake-slow": self._slow,
            "fake-disconnect": self._disconnect,
            "fake-nostream": _nostream,
            "fake-tools": self._tools,
            "fake-bad-event": self._bad_event,
            "fake-truncated": self._truncated,
            "fake-stall": self._stall,
        }
        return generation.get(model)

    # -- behaviours ------------------------------------------------------------------------

    async def _echo(self, request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
        reply = _reply(endpoint, body)
        if not body.get("stream"):
            return web.json_response(reply.body)
        return await self._stream(request, reply)

    async def _tools(self, request: web.Request, endpoint: str, body: Json
                     ) -> web.StreamResponse:
        from tests.support.fake_tools import tool_reply

        if endpoint != "chat/completions":
            return _model_not_found(body["model"])
        reply = tool_reply(body)
        if not body.get("stream"):
            return web.json_response(reply.body)
        return await self._stream(request, reply)

    async def _slow(self, request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
        reply = _reply(endpoint, body)
        if not body.get("stream"):
            return web.json_response(reply.body)
        return await self._stream(request, reply, content_delay=SLOW_DELAY)

    async def _die(self, request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
        if endpoint == "embeddings" or not body.get("stream"):
            _abort(request)
        return await self._stream(request, _reply(endpoint, body), abort_after=2)

    async def _split(self, request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
        reply = _reply(endpoint, body)
        if not body.get("stream"):
            return web.json_response(reply.body)
        resp = await _open_sse(request)
        *body_pieces, last = split_points(split_stream(reply.chunks))
        for piece in body_pieces:
            await resp.write(piece)
            await asyncio.sleep(0.001)
        request[_COMPLETE] = True  # the last piece completes `data: [DONE]`
        await resp.write(last)
        return await _finish(request, resp, done=False)

    async def _tricky(self, request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
        """Plain `data: ...` framing cut every 5 bytes, a content chunk saying "[DONE]", and a
        chunk naming another model: what a pass-through relay must not get wrong."""
        reply = _reply(endpoint, body)
        if not body.get("stream"):
            return web.json_response(reply.body)
        resp = await _open_sse(request)
        other = {**reply.tick(" other"), "model": "other-model"}
        first, *rest = [c for _, c in reply.chunks]
        data = b"".join(sse(c) for c in (first, reply.tick(" [DONE] "), other, *rest))
        data += sse("[DONE]")
        request[_COMPLETE] = True
        for i in range(0, len(data), 5):
            await resp.write(data[i : i + 5])
        await resp.write_eof()
        return resp

    async def _bad_event(
        self, request: web.Request, endpoint: str, body: Json
    ) -> web.StreamResponse:
        """Streams the role chunk, one content chunk, then an event that is not JSON
        (BAD_EVENT), then the rest as usual: the non-streamed answer is not JSON either.
        A last user message "crlf" frames the events with CRLF line ends; "utf8" sends
        BAD_UTF8_EVENT (valid JSON syntax, invalid UTF-8) instead of BAD_EVENT."""
        if not body.get("stream"):
            return web.Response(status=200, body=BAD_EVENT.encode(),
                                content_type="application/json")
        reply = _reply(endpoint, body)
        how = last_user_text(body.get("messages"))
        eol = "\r\n" if how == "crlf" else "\n"
        resp = await _open_sse(request)
        chunks = [c for _, c in reply.chunks]
        for chunk in chunks[:2]:
            await resp.write(sse(chunk, eol))
        if how == "utf8":
            await resp.write(b"data: " + BAD_UTF8_EVENT + b"\n\n")
        else:
            await resp.write(sse(BAD_EVENT, eol))
        for chunk in chunks[2:]:
            await resp.write(sse(chunk, eol))
        await resp.write(sse("[DONE]", eol))
        return await _finish(request, resp, done=False)

    async def _truncated(
        self, request: web.Request, endpoint: str, body: Json
    ) -> web.StreamResponse:
        """Streams the content chunks, then ends the body cleanly: no finish_reason, no
        usage, no [DONE]. The non-streamed answer is whole."""
        reply = _reply(endpoint, body)
        if not body.get("stream"):
            return web.json_response(reply.body)
        resp = await _open_sse(request)
        for kind, chunk in reply.chunks:
            if kind in ("role", "content"):
                await resp.write(sse(chunk))
        return await _finish(request, resp, done=False)

    async def _stall(self, request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
        """A streamed answer that stalls for STALL_SECONDS at the point named by the last
        user message (one of STALL_POINTS); "stalled" is recorded as it starts to wait."""
        point = last_user_text(body.get("messages")) or prompt_texts(body.get("prompt"))[0]
        model = body["model"]

        async def stall(at: str) -> None:
            if point == at:
                self._event("stalled", model)
                await asyncio.sleep(STALL_SECONDS)

        reply = _reply(endpoint, body)
        await stall("headers")
        resp = await _open_sse(request)
        await resp.write(b": open\n\n")
        await stall("open")
        for i, (_, chunk) in enumerate(reply.chunks):
            await resp.write(sse(chunk))
            if i == 0:
                await stall("first")
        await stall("done")
        return await _finish(request, resp)

    async def _hang(self, request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
        await asyncio.sleep(HANG_SECONDS)  # cancelled on client disconnect or shutdown
        return error_response(504, "fake-hang gave up", "server_error", "fake_hang")

    async def _disconnect(
        self, request: web.Request, endpoint: str, body: Json
    ) -> web.StreamResponse:
        reply = _reply(endpoint, body)
        resp = await _open_sse(request)
        for _, chunk in (c for c in reply.chunks if c[0] == "role"):
            await resp.write(sse(chunk))
        deadline = time.monotonic() + DISCONNECT_SECONDS
        started = False
        while time.monotonic() < deadline:
            await resp.write(sse(reply.tick("tick ")))
            if not started:
                self._event("started", body["model"])
                started = True
            await asyncio.sleep(TICK_INTERVAL)
        for _, chunk in (c for c in reply.chunks if c[0] in ("finish", "usage")):
            await resp.write(sse(chunk))
        return await _finish(request, resp)

    async def _stream(
        self,
        request: web.Request,
        reply: Reply,
        *,
        content_delay: float = 0.0,
        abort_after: int | None = None,
    ) -> web.StreamResponse:
        resp = await _open_sse(request)
        sent = 0
        for kind, chunk in reply.chunks:
            if kind == "content" and content_delay:
                await asyncio.sleep(content_delay)
            await resp.write(sse(chunk))
            sent += kind == "content"
            if abort_after is not None and sent == abort_after:
                _abort(request)
        return await _finish(request, resp)


# --- stateless behaviours -----------------------------------------------------------------


class _Aborted(Exception):
    """fake-die cut the connection; the handler ends as if cancelled."""


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()  # RST-like close: no [DONE], no chunked terminator
    raise _Aborted


def _parse(raw: bytes) -> object:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return _INVALID


def _reply(endpoint: str, body: Json) -> Reply:
    suffix = SPLIT_SUFFIX if body["model"] == "fake-split" else ""
    if endpoint == "chat/completions":
        return chat_reply(body, "echo: " + last_user_text(body.get("messages")) + suffix)
    return completion_reply(body, "echo: " + prompt_texts(body.get("prompt"))[0] + suffix)


async def _finish(
    request: web.Request, resp: web.StreamResponse, *, done: bool = True
) -> web.StreamResponse:
    """End a stream; a client that hangs up after this point is not a disconnect."""
    request[_COMPLETE] = True
    if done:
        await resp.write(sse("[DONE]"))
    await resp.write_eof()
    return resp


async def _open_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    request[_SSE] = resp
    return resp


def _model_not_found(model: str) -> web.Response:
    message = f"The model `{model}` does not exist or you do not have access to it."
    return error_response(404, message, "invalid_request_error", "model_not_found", param="model")


async def _fake_error(status: int) -> web.StreamResponse:
    type_ = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    headers = {"Retry-After": "1"} if status == 429 else None
    return error_response(
        status, f"fake upstream error {status}", type_, f"fake_{status}", headers=headers
    )


async def _error_text(request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
    return web.Response(status=500, text="fake upstream plain-text failure")


async def _traceback(request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
    return error_response(500, TRACEBACK, "server_error", None)


async def _bad_json(request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
    return web.Response(status=200, body=b'{"id": ', content_type="application/json")


async def _nostream(request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
    return web.json_response(_reply(endpoint, body).body)


async def _embeddings(request: web.Request, endpoint: str, body: Json) -> web.StreamResponse:
    return web.json_response(embeddings_body(body))
