"""The Redis store. Everything is one Lua script, atomic on the server, so replicas never race
between reading a counter and raising it; time is Redis's own clock.

Calls from one worker are coalesced: while a script call is in flight, the admissions and
charges that arrive queue up and go together in the next call (each still atomic on its own,
and in the order they were made). An idle worker pays one round trip per admission; a busy
one shares each round trip among every request that arrived meanwhile. Charges at the end of
a request are not waited for: they go out in the next call, ahead of any later admission of
this worker: at once when no call is in flight, else with the next call.

A request's operation names its Spec by number; the call carries the checks of each Spec its
operations name, once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable
from itertools import chain
from typing import Any

import msgspec

from airouter.limits import metrics, resp
from airouter.limits.engine import (
    LEASE_TTL,
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


class RedisEngine(Engine):
    def __init__(self, url: str, timeout: float = 0.5) -> None:
        self.url = url
        self._specs: dict[int, list[Any]] = {}  # the Specs the queued ops name
        self.timeout = timeout
        self._conn: resp.Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._logged = 0.0
        self.up = True
        self._ops: list[Any] = []
        self._waiters: list[asyncio.Future[Any] | None] = []  # per op; None: nobody waits
        self._scheduled = False
        # The batch in flight: its waiters, command and time-out; one at a time.
        self._inflight: tuple[list[asyncio.Future[Any] | None], bytes, asyncio.TimerHandle] | None
        self._inflight = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        metrics.LIMITS_UP.labels("redis").set(1)

    async def aclose(self) -> None:
        if self._ops or self._inflight is not None:
            # Ops run in order: when this empty one is answered, every queued charge is in.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._op(["R"]), 2)
        if self._conn is not None:
            self._conn.close()

    # -- batching ---------------------------------------------------------------------------

    def _queue(self, op: Any, fut: asyncio.Future[Any] | None, now: bool = False) -> bool:
        """Queue an op for the next script call, sent `now` if no call is in flight; False
        when Redis is down (skipped)."""
        if not self.up and time.monotonic() < self._down_until:
            return False
        self._ops.append(op)
        self._waiters.append(fut)
        if self._inflight is None:
            if now:
                self._flush()
            elif not self._scheduled:
                # At the end of this loop turn: every op made in the same turn goes in one call.
                self._scheduled = True
                loop = self._loop or asyncio.get_running_loop()
                loop.call_soon(self._flush)
        return True

    def _op(self, op: Any) -> asyncio.Future[Any]:
        """The op's answer (an admission's Outcome), or None: no verdict (Redis is down)."""
        fut = (self._loop or asyncio.get_running_loop()).create_future()
        if not self._queue(op, fut):
            fut.set_result(None)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._inflight is not None or not self._ops:
            return
        conn = self._conn
        if conn is None or conn.transport is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return
        ops, waiters, specs = self._ops, self._waiters, self._specs
        if len(ops) > MAX_BATCH:
            self._ops, self._waiters = ops[MAX_BATCH:], waiters[MAX_BATCH:]
            ops, waiters = ops[:MAX_BATCH], waiters[:MAX_BATCH]
        else:
            self._ops, self._waiters, self._specs = [], [], {}
        packed = _pack((WINDOW_SECONDS, int(LEASE_TTL * 1000), specs, ops))
        cmd = b"%s$%d\r\n%s\r\n" % (_EVALSHA, len(packed), packed)
        loop = self._loop or asyncio.get_running_loop()
        self._inflight = (waiters, packed, loop.call_later(self.timeout, self._timed_out, conn))
        conn.send(cmd, self._reply)

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._conn = await resp.connect(self.url, SCRIPT.encode())
        except (OSError, resp.ReplyError) as e:
            self._failed(e)
            self._drop_queued()
        finally:
            self._connecting = None
        self._flush()

    def _timed_out(self, conn: resp.Connection) -> None:
        conn.close(TimeoutError("Redis did not answer in time"))

    def _reply(self, reply: resp.Reply) -> None:
        assert self._inflight is not None
        waiters, packed, timer = self._inflight
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
        for fut, result in zip(waiters, results, strict=True):
            if fut is not None and not fut.done():
                fut.set_result(_outcome(result) if type(result) is list else result)
        if self._ops:
            self._flush()

    def _drop_queued(self) -> None:
        """Redis is down: the queued ops get no verdict (their waiters apply the policy)."""
        waiters, self._ops, self._waiters, self._specs = self._waiters, [], [], {}
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
        return self._op(["A", dry, lease, *chain.from_iterable(checks)])

    def admit_spec(self, spec: Spec, prompt: int, lease: str) -> asyncio.Future[Outcome | None]:
        self._specs.setdefault(spec.id, spec.flat)
        return self._op(["P", spec.id, prompt, lease])

    def charge_spec(
        self, spec: Spec, tokens: int, lease: str, release: bool
    ) -> Awaitable[None] | None:
        self._specs.setdefault(spec.id, spec.flat)
        self._send(["Q", spec.id, tokens, lease if release else ""])
        return None

    def post(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> Awaitable[None] | None:
        self._send(_charge(items, release, lease))
        return None

    def _send(self, op: list[Any]) -> None:
        """Queue an op nobody waits for; idle, on the wire now, before the answer's last bytes
        leave."""
        self._queue(op, None, now=True)

    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        await self._op(_charge(items, release, lease))

    async def release(self, keys: list[str], lease: str) -> None:
        await self.charge([], keys, lease)

    async def renew(self, keys: list[str], leases: list[str]) -> None:
        await self._op(["R", *chain.from_iterable(zip(keys, leases, strict=True))])


def _outcome(out: list[Any]) -> Outcome:
    """An admission's answer: [failed (0: admitted), wait (-1: never), used * n, reset * n]."""
    n = (len(out) - 2) >> 1
    wait = out[1]
    return Outcome(out[0] - 1, math.inf if wait < 0 else wait, out[2:2 + n], out[2 + n:])


def _charge(items: list[Item], release: list[str] | None, lease: str) -> list[Any]:
    op: list[Any] = ["C", lease, len(items), *chain.from_iterable(items)]
    if release:
        op += release
    return op

