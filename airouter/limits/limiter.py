"""Admission before a request reaches its backend, token accounting while it streams, and
release at its end. One store round trip per admission; completion tokens in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any

from airouter.backends.base import Stats, Target
from airouter.config import Config
from airouter.errors import RouterError, ServiceUnavailable
from airouter.limits import metrics
from airouter.limits.engine import (
    LEASE_TTL,
    PROMPT,
    TOTAL,
    Check,
    Engine,
    LocalEngine,
    Outcome,
    Spec,
)
from airouter.limits.policy import (
    BUDGET,
    CONCURRENT,
    PREFIX,
    REQUESTS,
    TOKENS,
    Rule,
    Rules,
    refusal,
    reset_header,
)
from airouter.limits.shared import SOCKET_ENV, SharedEngine
from airouter.tokenizers import estimated_prompt, prompt_tokens

log = logging.getLogger("airouter.limits")
BATCH = 32  # streamed chunks per completion-token charge: no store round trip per token
USAGE_FLUSH = 1.0  # seconds between sends of the per-key usage totals and metrics


def make_engine(cfg: Config) -> Engine:
    if cfg.server.redis_url:
        from airouter.limits.redis_engine import RedisEngine

        return RedisEngine(cfg.server.redis_url)
    path = os.environ.get(SOCKET_ENV)
    return SharedEngine(path) if path else LocalEngine()


_USAGE_KEYS: dict[str, tuple[str, str, str, str]] = {}


def usage_keys(key: str) -> tuple[str, str, str, str]:
    """A key's totals: requests, prompt and completion tokens, ms waited for full nodes."""
    keys = _USAGE_KEYS.get(key)
    if keys is None:
        base = f"{PREFIX}u:{key}:"
        keys = _USAGE_KEYS[key] = (base + "requests", base + "prompt", base + "completion",
                                   base + "queue_ms")
    return keys


class Ticket:
    """One admitted request: what it was charged, and the leases it holds."""

    __slots__ = (
        "limiter", "key", "label", "spec", "lease", "prompt", "charged", "seen", "settled",
        "headers",
    )

    def __init__(self, limiter: Limiter, key: str, label: str, prompt: int) -> None:
        self.limiter = limiter
        self.key = key
        self.label = label
        self.spec: Spec | None = None  # what the store counted for it; None: nothing
        self.lease = ""
        self.prompt = prompt
        self.charged = 0  # completion tokens charged so far
        self.seen = 0  # events streamed: the completion estimate when the backend counts none
        self.settled = False
        self.headers: list[tuple[str, str]] = []

    def chunk(self, data: bytes) -> None:
        """Streamed events went out (about one token each): charge every BATCH of them."""
        self.seen += data.count(b"\n\n")
        spec = self.spec
        if spec is not None and spec.charges and self.seen - self.charged >= BATCH:
            n = self.seen - self.charged
            self.charged = self.seen
            engine = self.limiter.engine
            assert engine is not None
            wait = engine.charge_spec(spec, n, self.lease, False)
            if wait is not None:
                self.limiter.spawn(wait)

    async def settle(self, stats: Stats | None, failed: bool = False) -> None:
        """The answer is complete: charge the difference between what the backend counted
        (or what we estimated) and what was charged so far, and free the request's slots.
        A request that `failed` before any output gets its prompt tokens back."""
        wait = self._settle(stats, failed)
        if wait is not None:
            await wait

    def _settle(self, stats: Stats | None, failed: bool) -> Awaitable[None] | None:
        """Settle now; what is left to wait for where the store cannot queue the charge."""
        if self.settled:
            return None
        self.settled = True
        if failed and not self.seen and (stats is None or stats.completion_tokens is None):
            prompt = 0
        else:
            prompt = stats.prompt_tokens if stats and stats.prompt_tokens else self.prompt
        completion = stats.completion_tokens if stats and stats.completion_tokens is not None \
            else self.seen
        delta = prompt - self.prompt + completion - self.charged
        self.charged = completion
        lim = self.limiter
        lim.record(self.key, self.label, prompt, completion, stats.queued if stats else 0.0)
        engine, spec = lim.engine, self.spec
        if engine is None or spec is None or not (spec.charges or spec.lease_keys):
            return None
        if self.lease:
            lim.leases.pop(self.lease, None)
        # Queued ahead of this worker's next admission and sent before, or with, the last
        # bytes: a client that sends its next request at once finds its tokens counted and its
        # slot free, on any replica.
        return engine.charge_spec(
            spec, delta if spec.charges else 0, self.lease, bool(spec.lease_keys)
        )

    def release(self, stats: Stats | None) -> None:
        """The request is over (done, failed or cancelled): settle it if the answer did not."""
        if not self.settled:
            wait = self._settle(stats, True)
            if wait is not None:
                self.limiter.spawn(wait)


class Plan:
    """What the requests of one (key, model label) pair check, built on first use: their
    store Spec (rebuilt when a budget's day or month turns) and the rate-limit headers."""

    __slots__ = ("rules", "scopes", "_spec", "_day", "_dated")

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._spec: Spec | None = None
        self._day = -1
        self._dated = any(r.what == BUDGET and r.period for r in rules)
        # Per header scope: its three names and, per check in it, (index, limit, limit text).
        self.scopes = [
            (*names, checks)
            for what, names in ((REQUESTS, _REQUEST_HEADERS), (TOKENS, _TOKEN_HEADERS))
            if (checks := tuple((i, r.limit, str(r.limit)) for i, r in enumerate(rules)
                                if r.what == what))
        ]

    def spec(self, rules: Rules) -> Spec:
        s = self._spec
        if s is not None and not self._dated:
            return s
        day = int(time.time() // 86400) if self._dated else 0
        if s is None or day != self._day:
            self._spec = s = Spec(rules.checks(self.rules, PROMPT))
            self._day = day
        return s

    def headers(self, out: Outcome) -> list[tuple[str, str]]:
        """x-ratelimit-* for requests and tokens, admitted or refused: the scope with the
        least left wins (names and limits built once)."""
        used = out.used
        h: list[tuple[str, str]] = []
        for limit_h, left_h, reset_h, checks in self.scopes:
            left = -1
            for i, limit, text in checks:
                n = limit - used[i]
                if n < 0:
                    n = 0
                if left < 0 or n < left:
                    best, left, best_text = i, n, text
            h += (
                (limit_h, best_text), (left_h, str(left)), (reset_h, reset_header(out.reset[best]))
            )
        return h


_REQUEST_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests")
_TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                  "x-ratelimit-reset-tokens")
_NO_PLAN = Plan([])


class Limiter:
    def __init__(self, cfg: Config) -> None:
        self.rules = Rules(cfg)
        self.allow_on_failure = cfg.server.limits_on_redis_failure == "allow"
        self.engine: Engine | None = make_engine(cfg) if (self.rules.active or cfg.keys) else None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.leases: dict[str, tuple[str, ...]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._children: dict[tuple[str, ...], Any] = {}
        self._plans: dict[tuple[str, str], Plan] = {}
        # Per (key, model): [requests, prompt, completion], added to Prometheus and (per key,
        # for /v1/usage) to the store once a second rather than per request.
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._seq = 0
        self._lease_prefix = os.urandom(6).hex() + ":"

    async def start(self) -> None:
        if self.engine is not None:
            await self.engine.start()
        self._renewer = asyncio.create_task(self._background())

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        with contextlib.suppress(Exception):
            await self._flush()
        if self.engine is not None:
            await self.engine.aclose()

    async def _flush(self) -> None:
        """Per-key totals to Prometheus and, for /v1/usage, to the store."""
        counts, self._counts = self._counts, {}
        usage: dict[str, int] = {}
        for (key, model), (requests, prompt, completion, queue_ms) in counts.items():
            self._child(metrics.KEY_REQUESTS, key, model).inc(requests)
            if prompt:
                self._child(metrics.KEY_TOKENS, key, model, "prompt").inc(prompt)
            if completion:
                self._child(metrics.KEY_TOKENS, key, model, "completion").inc(completion)
            for k, v in zip(usage_keys(key), (requests, prompt, completion, queue_ms),
                            strict=True):
                usage[k] = usage.get(k, 0) + v
        if usage and self.engine is not None:
            await self.engine.charge([(TOTAL, k, v, 0) for k, v in usage.items() if v])

    def spawn(self, coro: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _background(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(USAGE_FLUSH)
            ticks += 1
            with contextlib.suppress(Exception):
                await self._flush()
            if self.engine is not None and ticks * USAGE_FLUSH >= LEASE_TTL / 3:
                ticks = 0
                await self._renew()

    async def _renew(self) -> None:
        assert self.engine is not None
        if not self.engine.uses_leases:  # the store keeps this worker's counts itself
            with contextlib.suppress(Exception):
                await self.engine.renew([], [])
            return
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

    def record(
        self, key: str, model: str, prompt: int, completion: int, queued: float = 0.0
    ) -> None:
        c = self._counts.get((key, model))
        if c is None:
            c = self._counts[(key, model)] = [0, 0, 0, 0]
        if queued:
            c[3] += round(queued * 1000)
        c[0] += 1
        c[1] += prompt
        c[2] += completion

    def _plan(self, key: str, label: str) -> Plan:
        plan = self._plans.get((key, label))
        if plan is None:
            rules = self.rules.for_request(key, label) if self.rules.active else []
            plan = self._plans[(key, label)] = Plan(rules) if rules else _NO_PLAN
        return plan

    async def admit(self, key: str, target: Target, body: dict[str, Any]) -> Ticket:
        """Admit a request or raise the 429 (or, when the store is unreachable and the policy
        is "deny", the 503) the client should get."""
        label = target.label
        plan = self._plan(key, label)
        if plan is _NO_PLAN:
            return Ticket(self, key, label, 0)
        model = target.model
        if model.tokenizer:
            prompt = await prompt_tokens(model, body)
        else:  # what prompt_tokens counts without a tokenizer, without its coroutine
            prompt = estimated_prompt(body)
        ticket = Ticket(self, key, label, prompt)
        engine = self.engine
        assert engine is not None
        spec = plan.spec(self.rules)
        lease = ""
        if spec.lease_keys and engine.uses_leases:
            self._seq += 1
            lease = self._lease_prefix + str(self._seq)
        pending = engine.admit_spec(spec, prompt, lease)
        try:
            out = await pending
        except asyncio.CancelledError:
            wait = _abandoned(engine, spec, lease, pending)
            if wait is not None:
                self.spawn(wait)
            raise
        if out is None:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("limits: no verdict for key %s on %s (store unreachable): %s", key,
                          label, "allowed" if self.allow_on_failure else "refused")
            if self.allow_on_failure:
                return ticket
            self._child(metrics.KEY_REJECTED, key, "limits_unavailable").inc()
            raise ServiceUnavailable(
                "Rate limits cannot be checked right now; please retry shortly.",
                code="limits_unavailable",
                headers={"Retry-After": "1"},
            )
        if out.failed >= 0:
            rule = plan.rules[out.failed]
            self._child(metrics.KEY_REJECTED, key, rule.what).inc()
            check = spec.fill(prompt)[out.failed]
            err: RouterError = refusal(rule, check, out, target.alias)
            err.headers.update(plan.headers(out))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("limits: key %s refused on %s by %s (%d prompt tokens)", key, label,
                          rule.what, prompt)
            raise err
        if log.isEnabledFor(logging.DEBUG):
            log.debug("limits: key %s admitted on %s (%d prompt tokens)", key, label, prompt)
        ticket.headers = plan.headers(out)
        ticket.spec = spec
        if lease:
            ticket.lease = lease
            self.leases[lease] = spec.lease_keys
        return ticket

    async def report(self, key: str) -> dict[str, Any]:
        """What GET /v1/usage shows for one key: its limits now, and its use so far."""
        out: dict[str, Any] = {"key": key, "limits": {}}
        if self.engine is None:
            return out
        rules = self.rules.keys.get(key, [])
        totals = [Check(TOTAL, k, 1 << 62, 0) for k in usage_keys(key)]
        checks = self.rules.checks(rules, 0) if rules else []
        got = await self.engine.admit([*totals, *checks], "", dry=True)
        if got is None:
            out["error"] = "the limits store is unreachable"
            return out
        n, queue_ms = got.used[0], got.used[3]
        out["usage"] = {"requests": n, "prompt_tokens": got.used[1],
                        "completion_tokens": got.used[2], "total_tokens": got.used[1] + got.used[2]}
        # Time its requests waited for a slot of a full node (fair admission), in all and on
        # average per request.
        out["queue"] = {"wait_ms": queue_ms, "mean_wait_ms": round(queue_ms / n, 2) if n else 0}
        out["limits"] = _describe(rules, got.used[4:], got.reset[4:])
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


def _abandoned(
    engine: Engine, spec: Spec, lease: str, pending: Awaitable[Any]
) -> Awaitable[None] | None:
    """The request went away just as its admission was answered: the slots it was given go
    back at once (a store whose admission is a coroutine ran it whole, or leaves the lease
    unrenewed). What is left to wait for, as with any charge."""
    if isinstance(pending, asyncio.Future) and pending.done() and not pending.cancelled():
        out = pending.result()
        if out is not None and out.failed < 0 and spec.lease_keys:
            return engine.charge_spec(spec, 0, lease, True)
    return None


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
