"""OpenAI-compatible HTTP upstreams (vLLM, llama.cpp, OpenAI, another router) over aiohttp."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from airouter.backends.base import Backend, Call, Endpoint, Reply, Stats, Target
from airouter.backends.nodes import Node, NodePool, NodeSpec, with_failover
from airouter.config import OpenAIBackendConfig
from airouter.errors import (
    BadGateway,
    GatewayTimeout,
    RateLimited,
    RouterError,
    ServiceUnavailable,
    UpstreamError,
)
from airouter.streaming.sse import DONE, SSEDecoder, frame

_encode = msgspec.json.Encoder().encode
log = logging.getLogger("airouter.openai")

# The top-level "model" member. A JSON string value cannot contain an unescaped quote, so
# `"model":` can only be a key; responses put the top-level key before nested objects.
_MODEL = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')

_MODEL_VALUE = re.compile(rb':\s*"(.*)"$')

_PATHS = {
    Endpoint.CHAT: "/chat/completions",
    Endpoint.COMPLETIONS: "/completions",
    Endpoint.EMBEDDINGS: "/embeddings",
}


class _Probe(msgspec.Struct):
    """Validates a whole JSON answer while decoding only `model`."""

    model: Any = None


class _ErrorProbe(msgspec.Struct):
    error: Any = None
    message: Any = None
    detail: Any = None


_probe = msgspec.json.Decoder(_Probe).decode
_decode_any = msgspec.json.Decoder().decode


def complete_response(obj: dict[str, Any], alias: str) -> dict[str, Any]:
    """Speak the alias, and fill members the spec requires that some servers leave out
    (llama.cpp omits `message.refusal`, for one)."""
    obj["model"] = alias
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict):
            choice.setdefault("logprobs", None)
            msg = choice.get("message")
            if isinstance(msg, dict):
                msg.setdefault("refusal", None)
    return obj


_error_probe = msgspec.json.Decoder(_ErrorProbe).decode
_LOGGED = 500  # bytes of an upstream's error text kept for the log


def _host_port(url: str) -> str:
    """A node's label for metrics, logs and /health: never credentials from the URL."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def rewrite_model(payload: bytes, target: Target) -> bytes:
    return _MODEL.sub(target.model_repl, payload, count=1)


def _upstream_error(status: int, body: bytes, headers: Any, backend: str = "") -> RouterError:
    message = f"The backend answered with HTTP {status}."
    code: str | None = None
    etype: str | None = None
    param: str | None = None
    text = ""
    try:
        p = _error_probe(body)
        err = p.error
        if isinstance(err, dict):
            text = str(err.get("message") or "")
            code = err.get("code") if isinstance(err.get("code"), str) else None
            etype = err.get("type") if isinstance(err.get("type"), str) else None
            param = err.get("param") if isinstance(err.get("param"), str) else None
        elif isinstance(err, str):
            text = err
        elif isinstance(p.message, str):
            text = p.message
        elif isinstance(p.detail, str):
            text = p.detail
    except msgspec.DecodeError:
        text = body[:_LOGGED].decode("utf-8", "replace").strip()
    extra = {k: headers[k] for k in ("Retry-After",) if k in headers}
    if status == 401 or status == 403:
        # The upstream rejected *our* key; the client's key was fine.
        # Its message may quote (part of) our key: log it, never relay it.
        log.warning("upstream rejected the router's credentials (HTTP %d)", status)
        return BadGateway(
            "The backend rejected the router's credentials.", code="upstream_auth_failed"
        )
    if 400 <= status < 500:
        # The client's own mistake, in the upstream's words: theirs to read.
        err = UpstreamError(text or message, status=status, param=param, code=code,
                            headers=extra)
        err.type = etype or "invalid_request_error"
        return err
    # A server failure: its text may hold tracebacks, paths or hostnames. Operators get it
    # (bounded) in the log; clients get the router's own words.
    log.warning("backend %s answered HTTP %d: %s", backend, status,
                text[:_LOGGED].encode("unicode_escape", "backslashreplace").decode("ascii"))
    if status in (502, 503, 504):
        cls = {502: BadGateway, 503: ServiceUnavailable, 504: GatewayTimeout}[status]
        return cls(f"The backend '{backend}' answered with HTTP {status}.", headers=extra)
    return BadGateway(f"The backend '{backend}' failed (HTTP {status}).", code="upstream_error")


class OpenAIHttpBackend(Backend):
    """Forwards with the backend's own key; rewrites `model` both ways; relays streams live."""

    provider = "openai"

    def __init__(self, name: str, cfg: OpenAIBackendConfig) -> None:
        self.name = name
        self.cfg = cfg
        self._headers = {"Content-Type": "application/json", **cfg.headers}
        if cfg.api_key:
            self._headers["Authorization"] = f"Bearer {cfg.api_key}"
        self.pool = NodePool.from_config(
            name, cfg, [NodeSpec(n.url.rstrip("/"), n.weight) for n in cfg.node_urls()]
        )
        # Per node, computed once: the endpoint URLs and the label used in metrics and logs.
        self._urls = {
            n.url: {ep: n.url + path for ep, path in _PATHS.items()} for n in self.pool.nodes
        }
        self._labels = {n.url: _host_port(n.url) for n in self.pool.nodes}
        self._session: aiohttp.ClientSession | None = None
        # Connections the calls hold. The pool is never smaller than the nodes' concurrency
        # limits, and a call that would wait for a pooled connection is answered 429 at once:
        # waiting there is neither a bounded queue nor a connect timeout.
        nodes = len(self.pool.nodes)
        self._conns = 0
        self._conn_limit = max(cfg.max_connections, cfg.max_concurrent * nodes)

    def _full(self) -> RateLimited:
        return RateLimited(
            f"The backend '{self.name}' has all its {self._conn_limit} connections in use; "
            "retry shortly.",
            headers={"Retry-After": "1"},
            code="connection_limit",
        )

    def _returned(self) -> None:
        self._conns -= 1

    async def start(self) -> None:
        # Room for one health check per node beyond the calls' connections.
        limit = self._conn_limit + len(self.pool.nodes)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.cfg.connect_timeout,
                sock_connect=self.cfg.connect_timeout,
                sock_read=self.cfg.idle_timeout,
            ),
            headers=self._headers,
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
        )
        self.pool.start_checks(self._check, self.cfg.health_interval)

    async def aclose(self) -> None:
        self.pool.stop_checks()
        if self._session is not None:
            await self._session.close()

    async def _check(self, node: Node) -> bool | None:
        """Active health check: the node answers GET {base_url}/models without a 5xx.
        None when it did not answer in time (a busy llama.cpp answers only between
        generations): the pool decides whether that counts."""
        assert self._session is not None
        try:
            async with self._session.get(
                node.url + "/models", timeout=aiohttp.ClientTimeout(total=self.cfg.health_timeout)
            ) as r:
                await r.read()
                return r.status < 500
        except TimeoutError:
            return None
        except aiohttp.ClientError:
            return False

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.pool.any_available else "unavailable",
            "nodes": self.pool.status(),
        }

    def _upstream_streams(self, call: Call) -> bool:
        if call.endpoint is Endpoint.EMBEDDINGS or self.cfg.stream == "never":
            return False
        return self.cfg.stream == "always" or call.stream

    async def open(self, call: Call) -> Reply:
        assert self._session is not None, "backend not started"
        # A copy: call.body stays the client's request, for a fallback backend to start from.
        body = {**call.body, "model": call.target.backend_model}
        stream = self._upstream_streams(call)
        if call.endpoint is not Endpoint.EMBEDDINGS:
            if stream:
                body["stream"] = True
                if not call.stream:
                    # Aggregating for a non-streaming client: ask for usage so it is not lost.
                    body["stream_options"] = {"include_usage": True}
            elif call.stream:
                body["stream"] = False
                body.pop("stream_options", None)
        data = _encode(body)
        return await with_failover(
            self.pool, self.cfg.retries, lambda node: self._attempt(node, call, data, stream)
        )

    async def _attempt(self, node: Node, call: Call, data: bytes, stream: bool) -> Reply:
        assert self._session is not None
        call.stats.node = self._labels[node.url]
        # A whole answer arrives only when the generation is done: no first-token deadline for
        # it (the idle timeout still bounds the silence).
        try:
            async with asyncio.timeout(self.cfg.first_token_timeout if stream else None):
                return await self._send(node, call, data)
        except TimeoutError:
            raise GatewayTimeout(
                f"The backend '{self.name}' sent no answer within "
                f"{self.cfg.first_token_timeout:g}s."
            ) from None

    async def _send(self, node: Node, call: Call, data: bytes) -> Reply:
        if self._conns >= self._conn_limit:
            raise self._full()
        self._conns += 1
        handed = False  # a streamed reply gives the connection back when it closes
        try:
            reply = await self._send_on(node, call, data)
            handed = reply.body is None
            return reply
        finally:
            if not handed:
                self._conns -= 1

    async def _send_on(self, node: Node, call: Call, data: bytes) -> Reply:
        assert self._session is not None
        try:
            resp = await self._session.post(
                self._urls[node.url][call.endpoint], data=data, headers=call.headers or None
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise GatewayTimeout(f"The backend '{self.name}' did not answer in time.") from None
        except aiohttp.ClientConnectorError as e:
            raise BadGateway(
                f"Could not reach the backend '{self.name}': {type(e).__name__}.", retryable=True
            ) from None
        except aiohttp.ClientError as e:
            raise BadGateway(
                f"Could not reach the backend '{self.name}': {type(e).__name__}."
            ) from None
        try:
            if resp.status >= 400:
                raise _upstream_error(resp.status, await resp.read(), resp.headers, self.name)
            if resp.content_type == "text/event-stream":
                relay = _Relay(self.name, resp, call.target, call.stats, self._returned)
                # Wait for the first event, so a node that fails before it can be replaced.
                if call.stream:
                    raw = await relay.next_raw()
                    return Reply(sse=relay.iterate_raw(raw), aclose=relay.aclose)
                first = await relay.next_batch()
                return Reply(chunks=relay.iterate(first), aclose=relay.aclose)
            data = await resp.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            resp.close()
            raise GatewayTimeout(f"The backend '{self.name}' did not answer in time.") from None
        except aiohttp.ClientError as e:
            resp.close()
            raise BadGateway(f"The backend '{self.name}' failed: {type(e).__name__}.") from None
        except BaseException:
            resp.close()
            raise
        resp.release()
        try:
            if call.endpoint is Endpoint.EMBEDDINGS:
                # Large float arrays: validate and rewrite `model` without re-encoding them.
                if _probe(data).model != call.target.alias:
                    data = rewrite_model(data, call.target)
                return Reply(body=data)
            obj = _decode_any(data)
        except msgspec.DecodeError:
            raise BadGateway(f"The backend '{self.name}' sent invalid JSON.") from None
        if not isinstance(obj, dict):
            raise BadGateway(f"The backend '{self.name}' sent a JSON {type(obj).__name__}.")
        record_usage(obj, call.stats)
        return Reply(body=_encode(complete_response(obj, call.target.alias)))


class _Relay:
    """An upstream SSE stream, re-chunked into batches of payloads as reads arrive."""

    __slots__ = ("name", "resp", "target", "stats", "decoder", "done", "complete", "seen",
                 "tail", "pending", "raw_ok", "on_close", "failed")

    def __init__(self, name: str, resp: aiohttp.ClientResponse, target: Target,
                 stats: Stats, on_close: Callable[[], None]) -> None:
        self.name = name
        self.on_close = on_close
        self.resp = resp
        self.target = target
        self.stats = stats
        self.decoder = SSEDecoder()
        self.done = False
        self.complete = False  # the upstream sent [DONE]
        # An event that was not JSON: what came before it is relayed, then this is raised.
        self.failed: RouterError | None = None
        # The exact `"model":"..."` member the upstream writes: it repeats it in every chunk,
        # so after the first a plain bytes.replace does what the regex did.
        self.seen: bytes | None = None
        # The last two payloads: finish_reason and usage ride there.
        self.tail: tuple[bytes, bytes] = (b"", b"")
        self.pending = b""  # pass-through: an event not yet complete
        self.raw_ok = True  # pass-through until the upstream's framing needs the decoder

    def _rewrite(self, p: bytes) -> bytes:
        seen = self.seen
        if seen is not None:
            q = p.replace(seen, self.target.model_repl, 1)
            if q is not p or seen == self.target.model_repl:
                return q
        m = _MODEL.search(p)
        if m is None:
            return p
        self.seen = m.group(0)
        return p[: m.start()] + self.target.model_repl + p[m.end():]

    async def _read(self) -> bytes:
        """What the upstream sent next (b"" at its end), its failures as router errors."""
        try:
            return await self.resp.content.readany()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise GatewayTimeout(
                f"The backend '{self.name}' stopped sending for longer than the idle timeout."
            ) from None
        except aiohttp.ClientError as e:
            raise BadGateway(
                f"The backend '{self.name}' broke off the stream: {type(e).__name__}."
            ) from None

    async def next_batch(self) -> list[bytes] | None:
        """The next non-empty batch, or None at the end of the stream."""
        while not self.done:
            data = await self._read()
            payloads = self.decoder.feed(data) if data else self.decoder.close()
            if not data:
                self.done = True
            if not payloads:
                continue
            if DONE in payloads:
                self.done = self.complete = True
                del payloads[payloads.index(DONE) :]
            if payloads:
                tail = self.tail
                self.tail = (payloads[-2] if len(payloads) > 1 else tail[1], payloads[-1])
                return [self._rewrite(p) for p in payloads]
        self._end()
        return None

    async def next_raw(self) -> bytes | None:
        """Streaming clients: whole SSE events, passed through as read, with one bytes.replace
        for `model` per read instead of a decode, rewrite and re-frame per event. Upstream
        framing that is not plain `data: ...` + blank line falls back to the decoder."""
        if self.failed is not None:
            raise self.failed
        if not self.raw_ok:
            batch = await self.next_batch()
            if batch is None:
                return None
            return frame(batch) if (batch := self._valid(batch)) else b""
        repl = self.target.model_repl
        while not self.done:
            data = await self._read()
            if not data:
                self.done = True
                if self.pending:
                    return self._fallback(b"", final=True)
                break
            buf = self.pending + data if self.pending else data
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                if b"\r" in buf:
                    return self._fallback(data)
                self.pending = buf
                continue
            out = buf[: cut + 2]
            events = out.count(b"\n\n")
            # Pass through only one-line `data: ` events; anything else goes to the decoder.
            if (b"\r" in out or not out.startswith(b"data: ")
                    or out.count(b"\n") != 2 * events
                    or out.count(b"\n\ndata: ") != events - 1):
                return self._fallback(data)
            self.pending = buf[cut + 2 :]
            if out.endswith(b"data: [DONE]\n\n"):
                self.done = self.complete = True
                out = out[:-14]
                events -= 1
            if b"[DONE]" in out:  # not a plain last event: let the decoder judge
                self.done = self.complete = False
                self.pending = b""
                return self._fallback(buf)
            if not out:
                continue
            bad = _first_bad_event(out, events)
            if bad >= 0:
                end = out.find(b"\n\n", bad)
                self.failed = self._not_json(out[bad + 6 : end])
                self.done = False
                out = out[:bad]
                if not out:
                    raise self.failed
            seen = self.seen
            if seen is None:
                m = _MODEL.search(out)
                if m is not None:
                    seen = self.seen = m.group(0)
            if seen is not None and seen != repl:
                if out.count(seen) != out.count(b'"model"'):
                    self.pending = b""
                    return self._fallback(buf)  # a chunk naming another model
                out = out.replace(seen, repl)
            self._keep_tail(out)
            return out
        self._end()
        return None

    def _fallback(self, data: bytes, final: bool = False) -> bytes | None:
        """Hand what was read to the decoder and keep using it for the rest of the stream."""
        self.raw_ok = False
        data, self.pending = self.pending + data, b""
        payloads = self.decoder.feed(data)
        if final:
            payloads += self.decoder.close()
        if DONE in payloads:
            self.done = self.complete = True
            del payloads[payloads.index(DONE) :]
        if final:
            self.done = True
        if not payloads:
            if self.done:
                self._end()
                return None
            return b""  # nothing whole yet; the caller reads on
        payloads = self._valid(payloads)
        if not payloads:
            raise self.failed  # type: ignore[misc]
        tail = self.tail
        self.tail = (payloads[-2] if len(payloads) > 1 else tail[1], payloads[-1])
        return frame([self._rewrite(p) for p in payloads])

    def _keep_tail(self, out: bytes) -> None:
        # The last two events' payloads, found from the end without parsing the rest.
        end = len(out) - 2
        start = out.rfind(b"\n\ndata: ", 0, end)
        last = out[start + 8 : end] if start >= 0 else out[6:end]
        if start >= 0:
            prev_start = out.rfind(b"\n\ndata: ", 0, start)
            prev = out[prev_start + 8 : start] if prev_start >= 0 else out[6:start]
        else:
            prev = self.tail[1]
        self.tail = (prev, last)

    async def iterate_raw(self, first: bytes | None) -> AsyncIterator[bytes]:
        data = first
        while data is not None:
            if data:
                yield data
            data = await self.next_raw()

    def _valid(self, payloads: list[bytes]) -> list[bytes]:
        """The payloads before the first that is not a JSON object (kept to raise next)."""
        for i, p in enumerate(payloads):
            try:
                _check_event(p)
            except msgspec.DecodeError:
                self.failed = self._not_json(p)
                self.done = False
                return payloads[:i]
        return payloads

    def _not_json(self, data: bytes) -> RouterError:
        log.warning("backend %s sent an event that is not a JSON object: %s", self.name,
                    data[:_LOGGED].decode("utf-8", "replace")
                    .encode("unicode_escape", "backslashreplace").decode("ascii"))
        return BadGateway(f"The backend '{self.name}' sent an event that is not valid JSON.",
                          code="bad_upstream_event")

    def _end(self) -> None:
        """The upstream's stream ended: an answer cut short (no [DONE] and no finish_reason)
        must not look complete to the client."""
        self._note_tail()
        if not self.complete and self.stats.finish_reason is None:
            raise BadGateway(
                f"The backend '{self.name}' ended the stream before the answer was complete.",
                code="stream_truncated",
            )

    def _note_tail(self) -> None:
        # The backend's own model name, from the member we replaced (payloads carry the alias).
        if self.stats.response_model is None and self.seen is not None:
            m = _MODEL_VALUE.search(self.seen)
            if m:
                self.stats.response_model = m.group(1).decode("utf-8", "replace")
        # Decode only the last chunks (finish reason, usage) for metrics and traces.
        for p in self.tail:
            if not p:
                continue
            try:
                obj = _decode_any(p)
            except msgspec.DecodeError:
                continue
            if isinstance(obj, dict):
                record_usage(obj, self.stats)

    async def iterate(self, first: list[bytes] | None) -> AsyncIterator[list[bytes]]:
        batch = first
        while batch is not None:
            yield batch
            batch = await self.next_batch()

    async def aclose(self) -> None:
        resp = self.resp
        try:
            if self.done and not resp.content.at_eof():
                # [DONE] came before the body's end marker: wait a moment for it, so the
                # connection can be reused instead of paying a new handshake per stream.
                async with asyncio.timeout(0.05):
                    await resp.content.read()
        except (TimeoutError, aiohttp.ClientError):
            pass
        finally:
            # Whatever interrupted the wait (a cancellation too): close(), not release(), for
            # an unfinished stream: it must not go back to the pool, and closing the socket is
            # how the upstream learns the client went away.
            if self.done and resp.content.at_eof():
                resp.release()
            else:
                resp.close()
            self.on_close()


class _Object(msgspec.Struct):
    """Any JSON object: members are skipped, but the whole text is still validated."""


_check_event = msgspec.json.Decoder(_Object).decode


def _first_bad_event(out: bytes, events: int) -> int:
    """Where the first `data: ` event of `out` (whole one-line events) whose payload is not a
    JSON object starts, or -1. Such a payload must never reach the client: each is validated
    in C, without building any object (about 0.3 us for a 200-byte chunk)."""
    check = _check_event
    view = memoryview(out)
    if events == 1:
        try:
            check(view[6:-2])
        except msgspec.DecodeError:
            return 0
        return -1
    start = 6
    find = out.find
    for _ in range(events):
        end = find(b"\n\n", start)
        try:
            check(view[start:end])
        except msgspec.DecodeError:
            return start - 6
        start = end + 8
    return -1


def record_usage(obj: dict[str, Any], stats: Stats) -> None:
    if stats.response_model is None and isinstance(obj.get("model"), str):
        stats.response_model = obj["model"]
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            stats.prompt_tokens = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            stats.completion_tokens = usage["completion_tokens"]
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
            stats.finish_reason = choice["finish_reason"]
