"""Admission before a request reaches its backend, token accounting while it streams, and
release at its end. One store round trip per admission; completion tokens in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from typing import Any

from airouter.backends.base import Stats, Target
from airouter.config import Config
from airouter.errors import RouterError, ServiceUnavailable
from airouter.limits import metrics
from airouter.limits.engine import LEASE_TTL, LEASES, TOTAL, Engine, Item, LocalEngine
from airouter.limits.policy import (
    BUDGET,
    CONCURRENT,
    PREFIX,
    REQUESTS,
    TOKENS,
    Rule,
    Rules,
    headers,
    refusal,
)
from airouter.limits.shared import SOCKET_ENV, SharedEngine
from airouter.tokenizers import prompt_tokens

log = logging.getLogger("airouter.limits")
BATCH = 32  # streamed chunks per completion-token charge: no store round trip per token
USAGE_FLUSH = 1.0  # seconds between sends of the per-key usage totals and metrics


def make_engine(cfg: Config) -> Engine:
    if cfg.server.redis_url:
        from airouter.limits.redis_engine import RedisEngine

        return RedisEngine(cfg.server.redis_url)
    path = os.environ.get(SOCKET_ENV)
    return SharedEngine(path) if path else LocalEngine()


_USAGE_KEYS: dict[str, tuple[str, str, str]] = {}


def usage_keys(key: str) -> tuple[str, str, str]:
    keys = _USAGE_KEYS.get(key)
    if keys is None:
        base = f"{PREFIX}u:{key}:"
        keys = _USAGE_KEYS[key] = (base + "requests", base + "prompt", base + "completion")
    return keys


class Ticket:
    """One admitted request: what it was charged, and the leases it holds."""

    __slots__ = (
        "limiter", "key", "label", "token_rules", "lease", "lease_keys", "prompt",
        "charged", "seen", "settled", "headers",
    )

    def __init__(self, limiter: Limiter, key: str, label: str, prompt: int) -> None:
        self.limiter = limiter
        self.key = key
        self.label = label
        self.token_rules: list[tuple[str, str, int]] = []  # (kind, storage key, ttl)
        self.lease = ""
        self.lease_keys: list[str] = []
        self.prompt = prompt
        self.charged = 0  # completion tokens charged so far
        self.seen = 0  # events streamed: the completion estimate when the backend counts none
        self.settled = False
        self.headers: list[tuple[bytes, bytes]] = []

    def chunk(self, data: bytes) -> None:
        """Streamed events went out (about one token each): charge every BATCH of them."""
        self.seen += data.count(b"\n\n")
        if self.token_rules and self.seen - self.charged >= BATCH:
            n = self.seen - self.charged
            self.charged = self.seen
            engine = self.limiter.engine
            assert engine is not None
            self.limiter.spawn(engine.charge(self._items(n)))

    def _items(self, n: int) -> list[Item]:
        return [(kind, key, n, ttl) for kind, key, ttl in self.token_rules]

    async def settle(self, stats: Stats | None, failed: bool = False) -> None:
        """The answer is complete: charge the difference between what the backend counted
        (or what we estimated) and what was charged so far, and free the request's slots.
        A request that `failed` before any output gets its prompt tokens back."""
        if self.settled:
            return
        self.settled = True
        lim = self.limiter
        if failed and not self.seen and (stats is None or stats.completion_tokens is None):
            prompt = 0
        else:
            prompt = stats.prompt_tokens if stats and stats.prompt_tokens else self.prompt
        completion = stats.completion_tokens if stats and stats.completion_tokens is not None \
            else self.seen
        delta = prompt - self.prompt + completion - self.charged
        self.charged = completion
        lim.record(self.key, self.label, prompt, completion)
        engine = lim.engine
        if engine is None:
            return
        lim.add_usage(self.key, prompt, completion)
        items = self._items(delta) if delta and self.token_rules else []
        if self.lease_keys:
            lim.leases.pop(self.lease, None)
        if self.token_rules or self.lease_keys:
            # Before the last bytes: a client that sends its next request at once finds its
            # tokens counted and its slot free, on any replica.
            await engine.charge(items, self.lease_keys, self.lease)

    def release(self, stats: Stats | None) -> None:
        """The request is over (done, failed or cancelled): settle it if the answer did not."""
        if not self.settled:
            self.limiter.spawn(self.settle(stats, failed=True))


class Limiter:
    def __init__(self, cfg: Config) -> None:
        self.rules = Rules(cfg)
        self.allow_on_failure = cfg.server.limits_on_redis_failure == "allow"
        self.engine: Engine | None = make_engine(cfg) if (self.rules.active or cfg.keys) else None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.leases: dict[str, list[str]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._children: dict[tuple[str, ...], Any] = {}
        # Per (key, model): [requests, prompt, completion], added to Prometheus once a second
        # rather than three locked increments per request.
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._seq = 0
        self._lease_prefix = os.urandom(6).hex() + ":"
        # Use per key for /v1/usage, sent to the store in one batch a second, not per request.
        self._usage: dict[str, int] = {}

    async def start(self) -> None:
        if self.engine is not None:
            await self.engine.start()
        self._renewer = asyncio.create_task(self._background())

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        self._flush_metrics()
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await self._flush_usage()
            await self.engine.aclose()

    def add_usage(self, key: str, prompt: int, completion: int) -> None:
        u = self._usage
        req, p, c = usage_keys(key)
        u[req] = u.get(req, 0) + 1
        u[p] = u.get(p, 0) + prompt
        u[c] = u.get(c, 0) + completion

    async def _flush_usage(self) -> None:
        if self._usage and self.engine is not None:
            items = [(TOTAL, k, v, 0) for k, v in self._usage.items() if v]
            self._usage = {}
            await self.engine.charge(items)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _background(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(USAGE_FLUSH)
            ticks += 1
            self._flush_metrics()
            if self.engine is None:
                continue
            with contextlib.suppress(Exception):
                await self._flush_usage()
            if ticks * USAGE_FLUSH >= LEASE_TTL / 3:
                ticks = 0
                await self._renew()

    async def _renew(self) -> None:
        assert self.engine is not None
        keys: list[str] = []
        leases: list[str] = []
        for lease, lk in list(self.leases.items()):
            keys += lk
            leases += [lease] * len(lk)
        if keys:
            with contextlib.suppress(Exception):
                await self.engine.renew(keys, leases)

    def _child(self, metric: Any, *labels: str) -> Any:
        k = (metric._name, *labels)
        c = self._children.get(k)
        if c is None:
            c = self._children[k] = metric.labels(*labels)
        return c

    def record(self, key: str, model: str, prompt: int, completion: int) -> None:
        c = self._counts.get((key, model))
        if c is None:
            c = self._counts[(key, model)] = [0, 0, 0]
        c[0] += 1
        c[1] += prompt
        c[2] += completion

    def _flush_metrics(self) -> None:
        counts, self._counts = self._counts, {}
        for (key, model), (requests, prompt, completion) in counts.items():
            self._child(metrics.KEY_REQUESTS, key, model).inc(requests)
            if prompt:
                self._child(metrics.KEY_TOKENS, key, model, "prompt").inc(prompt)
            if completion:
                self._child(metrics.KEY_TOKENS, key, model, "completion").inc(completion)

    async def admit(self, key: str, target: Target, body: dict[str, Any]) -> Ticket:
        """Admit a request or raise the 429 (or, when the store is unreachable and the policy
        is "deny", the 503) the client should get."""
        label = target.label
        rules = self.rules.for_request(key, label) if self.rules.active else []
        if not rules:
            return Ticket(self, key, label, 0)
        prompt = await prompt_tokens(target.model, body)
        ticket = Ticket(self, key, label, prompt)
        assert self.engine is not None
        self._seq += 1
        lease = f"{self._lease_prefix}{self._seq}"
        checks = self.rules.checks(rules, prompt)
        out = await self.engine.admit(checks, lease)
        if out is None:
            if self.allow_on_failure:
                return ticket
            self._child(metrics.KEY_REJECTED, key, "limits_unavailable").inc()
            raise ServiceUnavailable(
                "Rate limits cannot be checked right now; please retry shortly.",
                code="limits_unavailable",
                headers={"Retry-After": "1"},
            )
        if out.failed >= 0:
            rule = rules[out.failed]
            self._child(metrics.KEY_REJECTED, key, rule.what).inc()
            err: RouterError = refusal(rule, checks[out.failed], out, target.alias)
            err.headers.update({k.decode(): v.decode() for k, v in headers(rules, out, False)})
            raise err
        ticket.headers = headers(rules, out, True)
        for r, c in zip(rules, checks, strict=True):
            if r.what in (TOKENS, BUDGET):
                ticket.token_rules.append((c.kind, c.key, c.ttl))
            elif r.kind == LEASES:
                ticket.lease_keys.append(c.key)
        if ticket.lease_keys:
            ticket.lease = lease
            self.leases[lease] = ticket.lease_keys
        return ticket

    async def report(self, key: str) -> dict[str, Any]:
        """What GET /v1/usage shows for one key: its limits now, and its use so far."""
        out: dict[str, Any] = {"key": key, "limits": {}}
        if self.engine is None:
            return out
        rules = self.rules.keys.get(key, [])
        req, p, c = usage_keys(key)
        from airouter.limits.engine import Check

        totals = [Check(TOTAL, k, 1 << 62, 0) for k in (req, p, c)]
        checks = self.rules.checks(rules, 0) if rules else []
        got = await self.engine.admit([*totals, *checks], "", dry=True)
        if got is None:
            out["error"] = "the limits store is unreachable"
            return out
        out["usage"] = {"requests": got.used[0], "prompt_tokens": got.used[1],
                        "completion_tokens": got.used[2], "total_tokens": got.used[1] + got.used[2]}
        out["limits"] = _describe(rules, got.used[3:], got.reset[3:])
        return out

    async def report_models(self, labels: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.engine is None:
            return out
        for label in labels:
            rules = self.rules.models.get(label)
            if not rules:
                continue
            got = await self.engine.admit(self.rules.checks(rules, 0), "", dry=True)
            if got is not None:
                out[label] = _describe(rules, got.used, got.reset)
        return out


def _describe(rules: list[Rule], used: list[int], reset: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r, u, s in zip(rules, used, reset, strict=True):
        entry: dict[str, Any] = {"limit": r.limit, "used": u, "remaining": max(0, r.limit - u)}
        if r.what in (REQUESTS, TOKENS):
            entry["reset_seconds"] = round(s, 3)
        elif r.what == BUDGET:
            entry["period"] = r.period or "lifetime"
        elif r.what == CONCURRENT:
            entry = {"limit": r.limit, "in_flight": u}
        out[r.what] = entry
    return out
