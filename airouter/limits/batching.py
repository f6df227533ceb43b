"""The batching that every client of a limits store shares (the counters and the node slots in
Redis, redis_engine and node_redis; both in the main process, shared): ops queue up, and one
call carries every op queued since the last one, with at most one call in flight. An op made
while a call is in flight goes in the next; ops made in one loop turn go together.

A store that fails is skipped for `retry_after`: its ops get no verdict without trying (a dead
server costs no latency), and the failure is logged once, then at most every LOG_EVERY.

RedisBatcher adds the connection (resp), the script call with its time-out, and NOSCRIPT."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Generic, TypeVar

import msgspec

from airouter.limits import metrics, resp

log = logging.getLogger("airouter.limits")

LOG_EVERY = 60.0
RETRY_AFTER = 1.0
MAX_BATCH = 256
O = TypeVar("O")  # noqa: E741 - an op
Waiter = asyncio.Future[Any] | None  # None: nobody waits for the op's answer
_unpack = msgspec.msgpack.Decoder().decode


class Batcher(Generic[O]):
    retry_after = RETRY_AFTER
    max_batch = MAX_BATCH
    gauge: str | None = None  # the store's label in airouter_limits_backend_up, if it has one

    def __init__(self, where: str) -> None:
        self.where = where  # the store, as logs name it
        self._ops: list[O] = []
        self._waiters: list[Waiter] = []
        self._scheduled = False
        self._busy = False  # a call is in flight
        self._down_until = 0.0
        self._logged = -LOG_EVERY
        self.up = True
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what a client provides --------------------------------------------------------------

    def _ready(self) -> bool:
        """A call can go now; else start connecting (which flushes when done)."""
        raise NotImplementedError

    def _send(self, ops: list[O], waiters: list[Waiter], more: bool) -> bool:
        """Send one call (`more`: ops are left for the next); True while its answer is due."""
        raise NotImplementedError

    def _pending(self) -> bool:
        return bool(self._ops)

    # -- queueing ----------------------------------------------------------------------------

    def skipping(self) -> bool:
        """The store failed less than retry_after ago: ops get no verdict without trying."""
        return not self.up and time.monotonic() < self._down_until

    def queue(self, op: O, fut: Waiter, now: bool = False) -> bool:
        """Queue an op for the next call, sent `now` if none is in flight, else at the end of
        this loop turn; False when the store is skipped."""
        if self.skipping():
            return False
        self._ops.append(op)
        self._waiters.append(fut)
        if not self._busy:
            if now:
                self.flush()
            else:
                self.flush_soon()
        return True

    def ask(self, op: O) -> asyncio.Future[Any]:
        """The op's answer, or None: no verdict (the store is away)."""
        fut = self.loop.create_future()
        if not self.queue(op, fut):
            fut.set_result(None)
        return fut

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def flush_soon(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._busy or not self._pending() or not self._ready():
            return
        ops, waiters, n = self._ops, self._waiters, self.max_batch
        if len(ops) > n:
            self._ops, self._waiters = ops[n:], waiters[n:]
            ops, waiters = ops[:n], waiters[:n]
        else:
            self._ops, self._waiters = [], []
        self._busy = self._send(ops, waiters, bool(self._ops))

    def answered(self) -> None:
        """The call in flight is over: the next goes if ops are queued."""
        self._busy = False
        if self._pending():
            self.flush()

    def drop_queued(self) -> None:
        """The store is away: the queued ops get no verdict (their waiters apply the policy)."""
        waiters, self._ops, self._waiters = self._waiters, [], []
        answer(waiters, None)

    # -- health ------------------------------------------------------------------------------

    def failed(self, e: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + self.retry_after
        if self.up or now - self._logged >= LOG_EVERY:
            log.error("limits: %s unreachable (%s); applying limits_on_redis_failure",
                      self.where, type(e).__name__)
            self._logged = now
        if self.up:
            self.up = False
            if self.gauge:
                metrics.LIMITS_UP.labels(self.gauge).set(0)

    def ok(self) -> None:
        if not self.up:
            self.up = True
            if self.gauge:
                metrics.LIMITS_UP.labels(self.gauge).set(1)
            log.warning("limits: %s is back", self.where)


def answer(waiters: list[Waiter], result: Any) -> None:
    for fut in waiters:
        if fut is not None and not fut.done():
            fut.set_result(result)


class RedisBatcher(Batcher[O]):
    """A Batcher whose calls are one Lua script each, over resp's connection."""

    script = ""

    def __init__(self, url: str, timeout: float, what: str = "") -> None:
        super().__init__(f"Redis at {resp.safe_url(url)}{what}")
        self.url = url
        self.timeout = timeout
        self._script = self.script.encode()
        self._sha = hashlib.sha1(self._script).hexdigest().encode()
        self._conn: resp.Connection | None = None
        self._connecting: asyncio.Task[None] | None = None

    def _ready(self) -> bool:
        conn = self._conn
        if conn is not None and conn.usable:
            return True
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        return False

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._conn = await resp.connect(self.url, self._script)
        except (OSError, ValueError, resp.ReplyError) as e:
            self.failed(e)
            self.drop_queued()
        finally:
            self._connecting = None
        self.flush()

    def eval(self, keys: list[bytes], packed: bytes, n: int, done: Any) -> None:
        """Run the script on `keys` and `packed`; `done(results)` gets its n results (a
        msgpack list), or None: no verdict. A failed connection is closed (a late reply must
        not answer the next call) and the store skipped for retry_after."""
        conn = self._conn
        assert conn is not None
        args = [b"%d" % len(keys), *keys, packed]
        cmd = resp.command(b"EVALSHA", self._sha, *args)
        timer = self.loop.call_later(
            self.timeout, conn.close, TimeoutError("Redis did not answer in time")
        )

        def reply(r: resp.Reply) -> None:
            if isinstance(r, resp.ReplyError) and str(r).startswith("NOSCRIPT"):
                # A restarted or flushed Redis: EVAL loads the script and runs this call.
                conn.send(resp.command(b"EVAL", self._script, *args), reply)
                return
            timer.cancel()
            results: Any = None
            failure: BaseException | None = None
            if isinstance(r, bytes):
                try:
                    results = _unpack(r)
                except msgspec.DecodeError:
                    log.exception("limits: the script at %s answered garbage", self.where)
                self.ok()
            elif isinstance(r, resp.ReplyError):
                # A script error (a Redis without Lua's cmsgpack, say): a bug or a setup
                # problem, not an outage; served under the same policy, logged in full.
                log.error("limits: the script at %s failed: %s", self.where, r)
            else:
                failure = r if isinstance(r, BaseException) else resp.ProtocolError(repr(r))
                self.failed(failure)
                conn.close(failure)
            if not isinstance(results, list) or len(results) != n:
                results = None
            done(results)
            if failure is not None:
                self.drop_queued()
            self.answered()

        conn.send(cmd, reply)

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
