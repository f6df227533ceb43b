"""OpenAI-compatible HTTP upstreams (vLLM, llama.cpp, OpenAI, another router) over HTTP/1.1."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from typing import Any

import msgspec

from airouter.backends.base import Backend, Call, Reply
from airouter.backends.engine_scrape import EngineScraper
from airouter.backends.failover import with_failover
from airouter.backends.http.client import (
    ConnectError,
    Deadline,
    Disconnected,
    HttpError,
    Origin,
    Pool,
)
from airouter.backends.node import Node, NodeSpec
from airouter.backends.nodes import NodePool
from airouter.backends.observer import QUIET, NodeObserver
from airouter.backends.openai.relay import Relay, rewrite_model
from airouter.backends.openai.relay_state import decode_any, record_usage
from airouter.backends.openai.resume import Resumer
from airouter.backends.openai.resume_state import resumable
from airouter.backends.prefix_policy import prompt_start, session_of, settle
from airouter.bounds import UPSTREAM_LOGGED, escaped
from airouter.config import OpenAIBackendConfig
from airouter.errors import (
    BadGateway,
    GatewayTimeout,
    RateLimited,
    RouterError,
    ServiceUnavailable,
    UpstreamError,
)
from airouter.protocol.endpoints import Endpoint
from airouter.upstream import Proxy, choose_proxy, client_context

_encode = msgspec.json.Encoder().encode
log = logging.getLogger("airouter.openai")

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


def _upstream_error(status: int, body: bytes, headers: dict[str, str],
                    backend: str = "") -> RouterError:
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
        text = body[:UPSTREAM_LOGGED].decode("utf-8", "replace").strip()
    extra = {"Retry-After": headers["retry-after"]} if "retry-after" in headers else {}
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
                escaped(text))
    if status in (502, 503, 504):
        cls = {502: BadGateway, 503: ServiceUnavailable, 504: GatewayTimeout}[status]
        return cls(f"The backend '{backend}' answered with HTTP {status}.", headers=extra)
    return BadGateway(f"The backend '{backend}' failed (HTTP {status}).", code="upstream_error")


class OpenAIHttpBackend(Backend):
    """Forwards with the backend's own key; rewrites `model` both ways; relays streams live."""

    provider = "openai"

    def __init__(
        self, name: str, cfg: OpenAIBackendConfig, observer: NodeObserver = QUIET
    ) -> None:
        self.name = name
        self.cfg = cfg
        headers = {"Content-Type": "application/json", **cfg.headers}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        self.pool = NodePool.from_config(
            name, cfg, [NodeSpec(n.url.rstrip("/"), n.weight) for n in cfg.node_urls()],
            observer,
        )
        self._scraper = EngineScraper.for_nodes(self.pool, "openai", cfg.node_urls(),
                                                cfg.metrics_interval, cfg.health_timeout)
        # Per node, made once (below): its connections.
        self._started = False
        # Connections the calls hold. The pool is never smaller than the nodes' concurrency
        # limits, and a call that would wait for a pooled connection is answered 429 at once:
        # waiting there is neither a bounded queue nor a connect timeout.
        nodes = len(self.pool.nodes)
        self._conns = 0
        self._conn_limit = max(cfg.max_connections, cfg.max_concurrent * nodes)
        # Idle connections kept per node: at most what the calls may hold.
        # One TLS context for every https node (its CA and client certificate, read once).
        tls = None
        if any(n.url.startswith("https:") for n in self.pool.nodes):
            tls = client_context(cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file)
        self._conn_pools = {
            n.url: Pool(Origin(n.url, headers, self._proxy(n.url)), cfg.connect_timeout,
                        cfg.idle_timeout, self._conn_limit, tls,
                        min(cfg.first_token_timeout, cfg.request_timeout))
            for n in self.pool.nodes
        }

    def _proxy(self, url: str) -> Proxy | None:
        try:
            proxy = choose_proxy(url, self.cfg.proxy)
        except ValueError as e:  # a bad proxy in the environment (the config's is checked)
            log.warning("backend %s: ignoring the environment's proxy for a node: %s",
                        self.name, e)
            return None
        if proxy is not None:
            log.debug("backend %s: a node through the proxy %s:%d", self.name, proxy.host,
                      proxy.port)
        return proxy

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
        self._started = True
        self.pool.start_checks(self._check, self.cfg.health_interval)
        self._scraper.start()

    async def aclose(self) -> None:
        self.pool.stop_checks()
        self._scraper.stop()
        for p in self._conn_pools.values():
            p.close()

    async def _check(self, node: Node) -> bool | None:
        """Active health check: the node answers GET {base_url}/models without a 5xx.
        None when it did not answer in time (a busy llama.cpp answers only between
        generations): the pool decides whether that counts."""
        r = None
        try:
            async with asyncio.timeout(self.cfg.health_timeout):
                r = await self._conn_pools[node.url].request(b"GET", "/models")
                await r.read()
                return r.status < 500
        except TimeoutError:
            return None
        except HttpError:
            return False
        finally:
            if r is not None:
                r.release()

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.pool.routable else "unavailable",
            "nodes": self.pool.status(),
        }

    def _upstream_streams(self, call: Call) -> bool:
        if call.endpoint is Endpoint.EMBEDDINGS or self.cfg.stream == "never":
            return False
        return self.cfg.stream == "always" or call.stream

    async def open(self, call: Call) -> Reply:
        assert self._started, "backend not started"
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
        if (self.cfg.resume == "off" or not (stream and call.stream)
                or call.endpoint is not Endpoint.CHAT):
            return await self._open(call, data, stream, self.cfg.retries)
        model = call.target.model
        keep = (resumable(body) and model.reasoning_parser is None
                and model.tool_parser is None)
        resumer = Resumer(self.name, self.pool.observer, call, body, keep, self.cfg.retries,
                          lambda r, cont, left: self._open(call, cont, True, left, r))
        return resumer.wrap(await self._open(call, data, True, self.cfg.retries, resumer))

    async def _open(self, call: Call, data: bytes, stream: bool, retries: int,
                    resumer: Resumer | None = None) -> Reply:
        tried = resumer.tried if resumer is not None else None
        prefix = self.pool.prefix
        if prefix is None or call.endpoint is Endpoint.EMBEDDINGS:
            return await with_failover(
                self.pool, retries, lambda node: self._attempt(node, call, data, stream, resumer),
                None, tried,
            )
        key = prefix.key(data, call.target.backend_model, session_of(call.body),
                         prompt_start(data))
        reply = await with_failover(
            self.pool, retries, lambda node: self._attempt(node, call, data, stream, resumer),
            key, tried,
        )
        reply.on_close(functools.partial(settle, self.pool, key, call.stats))
        return reply

    async def _attempt(self, node: Node, call: Call, data: bytes, stream: bool,
                       resumer: Resumer | None = None) -> Reply:
        call.stats.node = node.label
        if self._conns >= self._conn_limit:
            raise self._full()
        self._conns += 1
        handed = False  # a streamed reply gives the connection back when it closes
        cfg = self.cfg
        try:
            try:
                if stream:
                    # first_token_timeout until the first event (the head, then the event),
                    # the idle timeout between reads once the head is in; nothing else bounds
                    # a stream after its first event.
                    async with asyncio.timeout(cfg.first_token_timeout):
                        reply = await self._send_on(node, call, data, resumer=resumer)
                else:
                    # A whole answer: its head within first_token_timeout, all of it within
                    # request_timeout, the idle timeout between reads. The pool's sweep keeps
                    # these deadlines: no timer per request.
                    now = asyncio.get_running_loop().time()
                    reply = await self._send_on(node, call, data,
                                                now + cfg.first_token_timeout,
                                                now + cfg.request_timeout)
            except TimeoutError as e:
                raise self._timed_out(e) from None
            handed = reply.body is None
            return reply
        finally:
            if not handed:
                self._conns -= 1

    def _timed_out(self, e: TimeoutError) -> GatewayTimeout:
        what = e.what if isinstance(e, Deadline) else "head"
        if what == "whole":
            return GatewayTimeout(
                f"The backend '{self.name}' did not finish its answer within "
                f"{self.cfg.request_timeout:g}s (request_timeout)."
            )
        if what == "idle":
            return self._idle_timeout()
        return GatewayTimeout(
            f"The backend '{self.name}' did not start its answer within "
            f"{self.cfg.first_token_timeout:g}s (first_token_timeout)."
        )

    def _idle_timeout(self) -> GatewayTimeout:
        return GatewayTimeout(
            f"The backend '{self.name}' stopped sending for longer than "
            f"{self.cfg.idle_timeout:g}s (idle_timeout)."
        )

    async def _send_on(self, node: Node, call: Call, data: bytes,
                       head_due: float = math.inf, whole_due: float = math.inf,
                       resumer: Resumer | None = None) -> Reply:
        """`head_due` and `whole_due` (loop times) bound the wait for the head and the whole
        answer (Deadline from the pool; the idle timeout's is Deadline("idle")). `resumer`: a
        streamed chat answer that another node may finish (its relay keeps what it relays)."""
        t0 = time.perf_counter()
        try:
            resp = await self._conn_pools[node.url].request(
                b"POST", _PATHS[call.endpoint], data, call.headers, head_due, whole_due
            )
        except Deadline:
            raise
        except TimeoutError:  # connect_timeout's (a stream's deadline comes as a cancellation)
            raise GatewayTimeout(
                f"Could not connect to the backend '{self.name}' within "
                f"{self.cfg.connect_timeout:g}s (connect_timeout)."
            ) from None
        except ConnectError as e:
            raise BadGateway(
                f"Could not reach the backend '{self.name}': {type(e).__name__}.", retryable=True
            ) from None
        except HttpError as e:
            # Closed before its head: the node died or dropped us; another node may answer
            # (at most `retries` times, as Envoy's retry_on "reset").
            raise BadGateway(
                f"Could not reach the backend '{self.name}': {type(e).__name__}.",
                retryable=isinstance(e, Disconnected),
            ) from None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("backend %s: node %s answered HTTP %d (%s) in %.1f ms", self.name,
                      node.label, resp.status, resp.content_type or "no content type",
                      (time.perf_counter() - t0) * 1000)
        try:
            if resp.status >= 400:
                body = await resp.read()
                resp.release()  # read to its end: the connection may serve another call
                raise _upstream_error(resp.status, body, resp.headers, self.name)
            if resp.content_type == "text/event-stream":
                relay = Relay(self.name, resp, call.target, call.stats, self._returned,
                              None if resumer is None else resumer.state())
                # Wait for the first event, so a node that fails before it can be replaced.
                if call.stream:
                    raw = await relay.next_raw()
                    return Reply(sse=relay.iterate_raw(
                        raw, None if resumer is None else resumer.resume),
                                 aclose=relay.aclose)
                first = await relay.next_batch()
                return Reply(chunks=relay.iterate(first), aclose=relay.aclose)
            data = await resp.read()
        except Deadline as e:  # the pool's sweep: idle, or the whole answer's deadline
            resp.close()
            raise self._timed_out(e) from None
        except HttpError as e:
            resp.close()
            # Nothing reached the client yet (a whole answer, or a stream's first event).
            raise BadGateway(f"The backend '{self.name}' failed: {type(e).__name__}.",
                             retryable=isinstance(e, Disconnected)) from None
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
            obj = decode_any(data)
        except msgspec.DecodeError:
            raise BadGateway(f"The backend '{self.name}' sent invalid JSON.") from None
        if not isinstance(obj, dict):
            raise BadGateway(f"The backend '{self.name}' sent a JSON {type(obj).__name__}.")
        record_usage(obj, call.stats)
        return Reply(body=_encode(complete_response(obj, call.target.alias)))
