"""The Redis store. Everything is one Lua script, atomic on the server, so replicas never race
between reading a counter and raising it; time is Redis's own clock.

Calls from one worker are coalesced: while a script call is in flight, the admissions and
charges that arrive queue up and go together in the next call (each still atomic on its own,
and in the order they were made). An idle worker pays one round trip per admission; a busy
one shares each round trip among every request that arrived meanwhile. Charges at the end of
a request are not waited for: they go out in the next call, ahead of any later admission of
this worker: at once when no call is in flight, else with the next call.

A request's operation names its Spec by number; the call carries the checks of each Spec its
operations name, once.

Requests in flight (max_concurrent) are counted per worker: one field per worker under each
concurrency key, changed by admissions and releases, and read only while the worker is alive
(it says so with every call that changes its counts and every LEASE_TTL / 3). The worker keeps
its own count of what it holds, and every LEASE_TTL / 3 sets its fields to it: a release that
never reached Redis (it was away), or an admission applied there whose answer was lost, is
repaired then, as an unrenewed lease would expire."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable
from itertools import chain
from typing import Any

import msgspec

from airouter.limits import metrics, resp
from airouter.limits.engine import (
    LEASE_TTL,
    LEASES,
    WINDOW_SECONDS,
    Check,
    Engine,
    Item,
    Outcome,
    Spec,
)
from airouter.limits.redis_script import SCRIPT, SCRIPT_SHA

log = logging.getLogger("airouter.limits")

LOG_EVERY = 60.0
RETRY_AFTER = 1.0  # after a failure, skip Redis this long: a dead server costs no latency
MAX_BATCH = 256
_EVALSHA = b"*4\r\n$7\r\nEVALSHA\r\n$40\r\n" + SCRIPT_SHA.encode() + b"\r\n$1\r\n0\r\n"
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


WORKERS = "airouter:lim:workers"  # sorted set: worker id -> when it stops counting (ms)


class RedisEngine(Engine):
    uses_leases = False

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        self.url = url
        self.worker = os.urandom(8).hex()  # this process's field under every concurrency key
        # The Specs the queued ops name (number -> checks, and -> concurrency keys where it has
        # any): kept per call, so Specs no longer in use (a budget's period turned) go.
        self._specs: dict[int, list[Any]] = {}
        self._lease_keys: dict[int, tuple[str, ...]] = {}
        # Requests this worker holds, per concurrency key: admitted (answered and taken) less
        # released (queued, whether or not Redis heard of it). What a renewal sets.
        self._held: dict[str, int] = {}
        self._renew: asyncio.Future[Any] | None = None  # a renewal waiting for the next call
        self.timeout = timeout
        self._conn: resp.Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._logged = 0.0
        self.up = True
        self._ops: list[Any] = []
        self._waiters: list[asyncio.Future[Any] | None] = []  # per op; None: nobody waits
        self._scheduled = False
        # The batch in flight: its waiters, ops, their Specs' concurrency keys, command and
        # time-out; one at a time.
        self._inflight: (
            tuple[
                list[asyncio.Future[Any] | None], list[Any], dict[int, tuple[str, ...]], bytes,
                asyncio.TimerHandle,
            ] | None
        ) = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        metrics.LIMITS_UP.labels("redis").set(1)

    async def aclose(self) -> None:
        if self._ops or self._inflight is not None or self._held:
            # A last renewal: it goes with (or after) every queued charge and leaves this
            # worker's counts at what it still holds.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.renew([], []), 2)
        if self._conn is not None:
            self._conn.close()

    # -- batching ---------------------------------------------------------------------------

    def _queue(self, op: Any, fut: asyncio.Future[Any] | None, now: bool = False) -> bool:
        """Queue an op for the next script call, sent `now` if no call is in flight; False
        when Redis is down (skipped)."""
        if self._skipping():
            return False
        self._ops.append(op)
        self._waiters.append(fut)
        if self._inflight is None:
            if now:
                self._flush()
            else:
                self._flush_soon()
        return True

    def _skipping(self) -> bool:
        """Redis failed less than RETRY_AFTER ago: ops get no verdict without trying."""
        return not self.up and time.monotonic() < self._down_until

    def _flush_soon(self) -> None:
        if not self._scheduled:
            # At the end of this loop turn: every op made in the same turn goes in one call.
            self._scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush)

    def _op(self, op: Any) -> asyncio.Future[Any]:
        """The op's answer (an admission's Outcome), or None: no verdict (Redis is down)."""
        fut = (self._loop or asyncio.get_running_loop()).create_future()
        if not self._queue(op, fut):
            fut.set_result(None)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._inflight is not None or not (self._ops or self._renew):
            return
        conn = self._conn
        if conn is None or not conn.usable:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return
        ops, waiters, specs, lease_keys = self._ops, self._waiters, self._specs, self._lease_keys
        if len(ops) > MAX_BATCH:  # the rest keep the same Specs for the next call
            self._ops, self._waiters = ops[MAX_BATCH:], waiters[MAX_BATCH:]
            ops, waiters = ops[:MAX_BATCH], waiters[:MAX_BATCH]
        else:
            self._ops, self._waiters, self._specs, self._lease_keys = [], [], {}, {}
            if self._renew is not None:  # first in the call, whose every release it knows
                ops = [self._renewal(ops, lease_keys), *ops]
                waiters = [self._renew, *waiters]
                self._renew = None
        packed = _pack((WINDOW_SECONDS, int(LEASE_TTL * 1000), self.worker, WORKERS, specs, ops))
        cmd = b"%s$%d\r\n%s\r\n" % (_EVALSHA, len(packed), packed)
        loop = self._loop or asyncio.get_running_loop()
        timer = loop.call_later(self.timeout, self._timed_out, conn)
        self._inflight = (waiters, ops, lease_keys, packed, timer)
        conn.send(cmd, self._reply)

    def _renewal(self, ops: list[Any], lease_keys: dict[int, tuple[str, ...]]) -> list[Any]:
        """The R op that sets this worker's counts, before `ops` run: what it holds, plus
        what `ops` release (counted here already, taken off again by them)."""
        counts = dict(self._held)
        for op in ops:
            if op[0] == "Q":
                if op[3]:
                    for key in lease_keys.get(op[1], ()):
                        counts[key] += 1
            elif op[0] == "C":
                for key in op[2 + 4 * op[1]:]:
                    counts[key] = counts.get(key, 0) + 1
        return ["R", *chain.from_iterable(counts.items())]

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._conn = await resp.connect(self.url, SCRIPT.encode())
        except (OSError, ValueError, resp.ReplyError) as e:
            self._failed(e)
            self._drop_queued()
        finally:
            self._connecting = None
        self._flush()

    def _timed_out(self, conn: resp.Connection) -> None:
        conn.close(TimeoutError("Redis did not answer in time"))

    def _reply(self, reply: resp.Reply) -> None:
        assert self._inflight is not None
        waiters, ops, lease_keys, packed, timer = self._inflight
        if isinstance(reply, resp.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # A restarted or flushed Redis: EVAL loads the script and runs this batch.
            assert self._conn is not None
            self._conn.send(resp.command(b"EVAL", SCRIPT.encode(), b"0", packed), self._reply)
            return
        timer.cancel()
        self._inflight = None
        results: Any = None
        if isinstance(reply, bytes):
            try:
                results = _unpack(reply)
            except msgspec.DecodeError:
                log.exception("limits: the Redis script answered garbage")
            self._ok()
        elif isinstance(reply, resp.ReplyError):
            # A script error (a Redis without Lua's cmsgpack, say): a bug or a setup problem,
            # not an outage; served under the same policy, logged in full.
            log.error("limits: the Redis script failed: %s", reply)
        else:
            self._failed(reply if isinstance(reply, BaseException) else ValueError(repr(reply)))
            if self._conn is not None:
                self._conn.close()
            self._drop_queued()
        if not isinstance(results, list) or len(results) != len(waiters):
            results = [None] * len(waiters)
        # Every waiting request gets an answer, whatever happened (None: no verdict).
        for fut, op, result in zip(waiters, ops, results, strict=True):
            if type(result) is list:  # an admission's answer
                if result[0] == 0:
                    self._took(op, fut, lease_keys)
                result = _outcome(result)
            if fut is not None and not fut.done():
                fut.set_result(result)
        if self._ops or self._renew:
            self._flush()

    def _took(
        self,
        op: list[Any],
        fut: asyncio.Future[Any] | None,
        lease_keys: dict[int, tuple[str, ...]],
    ) -> None:
        """An admission went through: its slots are this worker's, or, if its request is no
        longer waiting for it, given back at once."""
        if op[0] == "P":
            keys: tuple[str, ...] | list[Any] = lease_keys.get(op[1], ())
        elif op[1]:  # a dry run holds nothing
            return
        else:
            keys = [op[j + 1] for j in range(2, len(op), 5) if op[j] == LEASES]
        if not keys:
            return
        if fut is not None and fut.cancelled():
            self._queue(_charge([], list(keys)), None)
            return
        held = self._held
        for key in keys:
            held[key] = held.get(key, 0) + 1

    def _drop_queued(self) -> None:
        """Redis is down: the queued ops get no verdict (their waiters apply the policy)."""
        waiters, self._ops, self._waiters = self._waiters, [], []
        self._specs, self._lease_keys = {}, {}
        if self._renew is not None:
            waiters.append(self._renew)
            self._renew = None
        for fut in waiters:
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _failed(self, e: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + RETRY_AFTER
        if self.up or now - self._logged >= LOG_EVERY:
            log.error("limits: Redis at %s unreachable (%s); applying limits_on_redis_failure",
                      resp.safe_url(self.url), type(e).__name__)
            self._logged = now
        if self.up:
            self.up = False
            metrics.LIMITS_UP.labels("redis").set(0)

    def _ok(self) -> None:
        if not self.up:
            self.up = True
            metrics.LIMITS_UP.labels("redis").set(1)
            log.warning("limits: Redis at %s is back", resp.safe_url(self.url))

    # -- the Engine interface ---------------------------------------------------------------

    def admit(
        self, checks: list[Check], lease: str, dry: bool = False
    ) -> asyncio.Future[Outcome | None]:
        return self._op(["A", dry, *chain.from_iterable(checks)])

    def _name(self, spec: Spec) -> None:
        """The next call carries `spec`: its checks, and its concurrency keys for what the
        call's admissions take and its releases give back."""
        if spec.id not in self._specs:
            self._specs[spec.id] = spec.flat
            if spec.lease_keys:
                self._lease_keys[spec.id] = spec.lease_keys

    def admit_spec(self, spec: Spec, prompt: int, lease: str) -> asyncio.Future[Outcome | None]:
        self._name(spec)
        return self._op(["P", spec.id, prompt])

    def charge_spec(
        self, spec: Spec, tokens: int, lease: str, release: bool
    ) -> Awaitable[None] | None:
        self._name(spec)
        if release and spec.lease_keys:
            self._released(spec.lease_keys)
        self._send(["Q", spec.id, tokens, release])
        return None

    def post(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> Awaitable[None] | None:
        if release:
            self._released(release)
        self._send(_charge(items, release))
        return None

    def _released(self, keys: tuple[str, ...] | list[str]) -> None:
        held = self._held
        for key in keys:
            held[key] = held.get(key, 0) - 1

    def _send(self, op: list[Any]) -> None:
        """Queue an op nobody waits for; idle, on the wire now, before the answer's last bytes
        leave."""
        self._queue(op, None, now=True)

    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        if release:
            self._released(release)
        await self._op(_charge(items, release))

    async def release(self, keys: list[str], lease: str) -> None:
        await self.charge([], keys, lease)

    def renew(self, keys: list[str], leases: list[str]) -> asyncio.Future[Any]:
        """Say this worker is alive and set its counts to what it holds, in the next call
        (the arguments, leases, are the other stores' business)."""
        if self._renew is not None:
            return self._renew
        fut = (self._loop or asyncio.get_running_loop()).create_future()
        if self._skipping():
            fut.set_result(None)
            return fut
        self._renew = fut
        if self._inflight is None:
            self._flush_soon()
        return fut


def _outcome(out: list[Any]) -> Outcome:
    """An admission's answer: [failed (0: admitted), wait (-1: never), used * n, reset * n]."""
    n = (len(out) - 2) >> 1
    wait = out[1]
    return Outcome(out[0] - 1, math.inf if wait < 0 else wait, out[2:2 + n], out[2 + n:])


def _charge(items: list[Item], release: list[str] | None) -> list[Any]:
    op: list[Any] = ["C", len(items), *chain.from_iterable(items)]
    if release:
        op += release
    return op

