"""The Redis store. Everything is one Lua script, atomic on the server, so replicas never race
between reading a counter and raising it; time is Redis's own clock.

Calls from one worker are coalesced: while a script call is in flight, the admissions and
charges that arrive queue up and go together in the next call (each still atomic on its own,
and in the order they were made). An idle worker pays one round trip per admission; a busy
one shares each round trip among every request that arrived meanwhile. Charges at the end of
a request are not waited for: they go out in the next call, ahead of any later admission of
this worker: at once when no call is in flight, else with the next call."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable
from itertools import chain
from typing import Any

import msgspec

from airouter.limits import metrics, resp
from airouter.limits.engine import LEASE_TTL, WINDOW_SECONDS, Check, Engine, Item, Outcome

log = logging.getLogger("airouter.limits")

# ARGV[1]: msgpack [window s, lease ttl ms, ops]; an op is one flat array (one Lua table to
# unpack per request, not one per check), one of
#   ["A", dry, lease, (kind, key, limit, amount, ttl) * n]  admit; result
#        [failed (0 = admitted), wait s (-1 = never), used * n, reset s * n]
#   ["C", lease, n, (kind, key, amount, ttl) * n, lease set key * m]  charge, free a lease
#   ["R", (lease set key, lease) * n]  renew leases
# Returns msgpack: one result per op (0 for C and R). The keys travel inside the argument, not
# in KEYS: one call touches the keys of many requests (many hash slots), so the script is for
# a single Redis, not a Cluster, either way.
#
# A window (rpm, tpm) is a hash of one-second buckets plus two fields: "n", their sum, and "o",
# the oldest bucket's second. A check reads those two; the buckets are read only when the
# oldest has left the window (about once a second per busy key) or to tell a refused client
# how long to wait. Within one call every counter is read once and written once, at the end,
# whatever number of requests touch it (a lease is its own member: added and removed each).
SCRIPT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local now_ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local batch = cmsgpack.unpack(ARGV[1])
local span, ttl = batch[1], batch[2]
local cut = sec - span
local out = {}
-- Per key: u, what is used (read once, then kept up to date), and p, what to add at the end.
local W, B, L = {}, {}, {}

local function rebuild(key)
  local h = redis.call('HGETALL', key)
  local u, o, dead = 0, nil, {}
  for j = 1, #h, 2 do
    local s = tonumber(h[j])
    if s then
      if s <= cut then
        dead[#dead + 1] = h[j]
      else
        u = u + tonumber(h[j + 1])
        if o == nil or s < o then o = s end
      end
    end
  end
  if o == nil then
    if #h > 0 then redis.call('DEL', key) end
    return 0, nil
  end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  redis.call('HSET', key, 'n', u, 'o', o)
  return u, o
end

local function entry(T, key)
  local e = T[key]
  if e == nil then
    e = {p = 0}
    T[key] = e
  end
  return e
end

local function window(key)
  local w = entry(W, key)
  if w.u == nil then
    local h = redis.call('HMGET', key, 'n', 'o')
    local u, o = tonumber(h[1]), tonumber(h[2])
    if o == nil or o <= cut then u, o = rebuild(key) end
    if o == nil and w.t then o = sec end
    w.u, w.o = u + w.p, o
  end
  return w
end

local function wait_for(key, need)
  local h = redis.call('HGETALL', key)
  local secs, vals = {}, {}
  for j = 1, #h, 2 do
    local s = tonumber(h[j])
    if s then
      secs[#secs + 1] = s
      vals[s] = tonumber(h[j + 1])
    end
  end
  local w = W[key]
  if w and w.t then
    if vals[sec] == nil then
      secs[#secs + 1] = sec
      vals[sec] = 0
    end
    vals[sec] = vals[sec] + w.p
  end
  table.sort(secs)
  local freed = 0
  for _, s in ipairs(secs) do
    freed = freed + vals[s]
    if freed >= need then return s + span - now end
  end
  return -1
end

local function total(key)
  local b = entry(B, key)
  if b.u == nil then b.u = tonumber(redis.call('GET', key) or '0') + b.p end
  return b
end

local function add(kind, key, amount, kttl)
  if kind == 'w' then
    local w = entry(W, key)
    w.p, w.t = w.p + amount, true
    if w.u then
      w.u = w.u + amount
      if w.o == nil then w.o = sec end
    end
  elseif kind == 'b' then
    local b = entry(B, key)
    b.p, b.t, b.ttl = b.p + amount, true, kttl
    if b.u then b.u = b.u + amount end
  end
end

for n, op in ipairs(batch[3]) do
  local what = op[1]
  if what == 'A' then
    local dry, lease, k = op[2], op[3], (#op - 3) / 5
    local res = {0, 0}
    local failed, wait = 0, 0
    for i = 1, k do
      local j = 3 + (i - 1) * 5
      local ck, key, limit, amount = op[j + 1], op[j + 2], op[j + 3], op[j + 4]
      local u, r, w = 0, 0, nil
      if ck == 'w' then
        local win = window(key)
        u = win.u
        if win.o then r = win.o + span - now end
        if u + amount > limit and failed == 0 then w = wait_for(key, u + amount - limit) end
      elseif ck == 'c' then
        local l = L[key]
        if l == nil then
          l = {n = redis.call('ZCARD', key)}
          L[key] = l
        end
        u = l.n
        -- Expired leases (of a worker that died) matter only where they would refuse.
        if (dry or u + amount > limit) and not l.clean then
          redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
          l.n, l.clean = redis.call('ZCARD', key), true
          u = l.n
        end
        if u + amount > limit then w = 1 end
      else
        u = total(key).u
        if u + amount > limit then w = -1 end
      end
      res[2 + i], res[2 + k + i] = u, r
      if failed == 0 and w ~= nil then failed, wait = i, w end
    end
    if failed == 0 and not dry then
      for i = 1, k do
        local j = 3 + (i - 1) * 5
        local ck, key, amount = op[j + 1], op[j + 2], op[j + 4]
        res[2 + i] = res[2 + i] + amount
        if ck == 'c' then
          local l = L[key]
          l.n, l.x = l.n + redis.call('ZADD', key, now_ms + ttl, lease), true
        else
          add(ck, key, amount, op[j + 5])
          if ck == 'w' and res[2 + k + i] == 0 then res[2 + k + i] = sec + span - now end
        end
      end
    end
    res[1], res[2] = failed, wait
    out[n] = res
  elseif what == 'C' then
    local lease, k = op[2], op[3]
    for i = 1, k do
      local j = 3 + (i - 1) * 4
      add(op[j + 1], op[j + 2], op[j + 3], op[j + 4])
    end
    for j = 4 + k * 4, #op do
      local key = op[j]
      local gone = redis.call('ZREM', key, lease)
      local l = L[key]
      if l then l.n = l.n - gone end
    end
    out[n] = 0
  else
    for j = 2, #op, 2 do
      redis.call('ZADD', op[j], 'XX', now_ms + ttl, op[j + 1])
      redis.call('PEXPIRE', op[j], ttl * 2)
    end
    out[n] = 0
  end
end

for key, w in pairs(W) do
  if w.t then
    -- The first use of this second's bucket: the key may be new, and lives a window longer.
    if redis.call('HINCRBY', key, sec, w.p) == w.p then
      redis.call('HSETNX', key, 'o', sec)
      redis.call('EXPIRE', key, span + 1)
    end
    redis.call('HINCRBY', key, 'n', w.p)
  end
end
for key, b in pairs(B) do
  if b.t and redis.call('INCRBY', key, b.p) == b.p and b.ttl > 0 then
    redis.call('EXPIRE', key, b.ttl)
  end
end
for key, l in pairs(L) do
  if l.x then redis.call('PEXPIRE', key, ttl * 2) end
end
return cmsgpack.pack(out)
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
LOG_EVERY = 60.0
RETRY_AFTER = 1.0  # after a failure, skip Redis this long: a dead server costs no latency
MAX_BATCH = 256
_EVALSHA = b"*4\r\n$7\r\nEVALSHA\r\n$40\r\n" + SCRIPT_SHA.encode() + b"\r\n$1\r\n0\r\n"
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


class RedisEngine(Engine):
    def __init__(self, url: str, timeout: float = 0.5) -> None:
        self.url = url
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

    def _queue(self, op: Any, fut: asyncio.Future[Any] | None) -> bool:
        """Queue an op for the next script call; False when Redis is down (skipped)."""
        if not self.up and time.monotonic() < self._down_until:
            return False
        self._ops.append(op)
        self._waiters.append(fut)
        if self._inflight is None and not self._scheduled:
            # At the end of this loop turn: every op made in the same turn goes in one call.
            self._scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._flush)
        return True

    async def _op(self, op: Any) -> Any:
        fut = (self._loop or asyncio.get_running_loop()).create_future()
        if not self._queue(op, fut):
            return None
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._inflight is not None or not self._ops:
            return
        conn = self._conn
        if conn is None or conn.transport is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return
        ops, waiters = self._ops, self._waiters
        if len(ops) > MAX_BATCH:
            self._ops, self._waiters = ops[MAX_BATCH:], waiters[MAX_BATCH:]
            ops, waiters = ops[:MAX_BATCH], waiters[:MAX_BATCH]
        else:
            self._ops, self._waiters = [], []
        packed = _pack((WINDOW_SECONDS, int(LEASE_TTL * 1000), ops))
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
                fut.set_result(result)
        if self._ops:
            self._flush()

    def _drop_queued(self) -> None:
        """Redis is down: the queued ops get no verdict (their waiters apply the policy)."""
        waiters, self._ops, self._waiters = self._waiters, [], []
        for fut in waiters:
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _failed(self, e: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + RETRY_AFTER
        if self.up or now - self._logged >= LOG_EVERY:
            log.error("limits: Redis at %s unreachable (%s); applying limits_on_redis_failure",
                      _safe(self.url), type(e).__name__)
            self._logged = now
        if self.up:
            self.up = False
            metrics.LIMITS_UP.labels("redis").set(0)

    def _ok(self) -> None:
        if not self.up:
            self.up = True
            metrics.LIMITS_UP.labels("redis").set(1)
            log.warning("limits: Redis at %s is back", _safe(self.url))

    # -- the Engine interface ---------------------------------------------------------------

    async def admit(self, checks: list[Check], lease: str, dry: bool = False) -> Outcome | None:
        out = await self._op(["A", dry, lease, *chain.from_iterable(checks)])
        if out is None:
            return None
        n = len(checks)
        wait = out[1]
        return Outcome(out[0] - 1, math.inf if wait < 0 else wait, out[2:2 + n], out[2 + n:])

    def post(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> Awaitable[None] | None:
        if self._queue(_charge(items, release, lease), None) and self._inflight is None:
            # Idle: on the wire now, before the answer's last bytes leave.
            self._flush()
        return None

    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        await self._op(_charge(items, release, lease))

    async def release(self, keys: list[str], lease: str) -> None:
        await self.charge([], keys, lease)

    async def renew(self, keys: list[str], leases: list[str]) -> None:
        await self._op(["R", *chain.from_iterable(zip(keys, leases, strict=True))])


def _charge(items: list[Item], release: list[str] | None, lease: str) -> list[Any]:
    op: list[Any] = ["C", lease, len(items), *chain.from_iterable(items)]
    if release:
        op += release
    return op


def _safe(url: str) -> str:
    """The URL without a password."""
    from urllib.parse import urlsplit

    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname or ''}:{p.port or 6379}{p.path}"
