"""The Redis store. Everything is one Lua script, atomic on the server, so replicas never race
between reading a counter and raising it; time is Redis's own clock.

Calls from one worker are coalesced: while a script call is in flight, the admissions and
charges that arrive queue up and go together in the next call (each still atomic on its own).
An idle worker pays one round trip per admission; a busy one shares each round trip among
every request that arrived meanwhile, which is where the CPU of a client goes (a syscall and a
reply parse per call, not per request)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from typing import Any

import msgspec

from airouter.limits import metrics
from airouter.limits.engine import LEASE_TTL, WINDOW_SECONDS, Check, Engine, Item, Outcome

log = logging.getLogger("airouter.limits")

# KEYS: every key the batch touches, once. ARGV[1]: msgpack [window s, lease ttl ms, ops], an
# op being one of (keys as 1-based indexes into KEYS):
#   ["A", dry, lease, [[key, kind, limit, amount, ttl], ...]]  admit; result
#        [failed (0 = admitted), wait ms (-1 = never), [used...], [reset ms...]]
#   ["C", lease, [[key, kind, amount, ttl], ...], [lease set key, ...]]  charge, free a lease
#   ["R", [[lease set key, lease], ...]]  renew leases
# Returns msgpack: one result per op (0 for C and R). One argument in and one out, packed
# and parsed in C on both sides, instead of hundreds of RESP arguments.
SCRIPT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local batch = cmsgpack.unpack(ARGV[1])
local span, ttl = batch[1], batch[2]
local out = {}

local function window(key, limit, amount)
  local h = redis.call('HGETALL', key)
  local secs, vals, u = {}, {}, 0
  for j = 1, #h, 2 do
    local s, v = tonumber(h[j]), tonumber(h[j + 1])
    if s <= sec - span then
      redis.call('HDEL', key, h[j])
    else
      u = u + v
      secs[#secs + 1] = s
      vals[s] = v
    end
  end
  table.sort(secs)
  local reset = 0
  if #secs > 0 then reset = (secs[1] + span) * 1000 - now end
  local wait = nil
  if u + amount > limit then
    wait = -1
    local need, freed = u + amount - limit, 0
    for _, s in ipairs(secs) do
      freed = freed + vals[s]
      if freed >= need then
        wait = (s + span) * 1000 - now
        break
      end
    end
  end
  return u, reset, wait
end

local function add(kind, key, amount, kttl)
  if kind == 'w' then
    redis.call('HINCRBY', key, sec, amount)
    redis.call('EXPIRE', key, span + 1)
  elseif kind == 'b' then
    redis.call('INCRBY', key, amount)
    if kttl > 0 then redis.call('EXPIRE', key, kttl) end
  end
end

for n, op in ipairs(batch[3]) do
  if op[1] == 'A' then
    local checks, used, reset = op[4], {}, {}
    local failed, wait = 0, 0
    for i, c in ipairs(checks) do
      local key, ck, limit, amount = KEYS[c[1]], c[2], c[3], c[4]
      local u, r, w = 0, 0, nil
      if ck == 'w' then
        u, r, w = window(key, limit, amount)
      elseif ck == 'c' then
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
        u = redis.call('ZCARD', key)
        if u + amount > limit then w = 1000 end
      else
        u = tonumber(redis.call('GET', key) or '0')
        if u + amount > limit then w = -1 end
      end
      used[i], reset[i] = u, r
      if failed == 0 and w ~= nil then failed, wait = i, w end
    end
    if failed == 0 and not op[2] then
      for i, c in ipairs(checks) do
        local key, ck, amount = KEYS[c[1]], c[2], c[4]
        used[i] = used[i] + amount
        if ck == 'c' then
          redis.call('ZADD', key, now + ttl, op[3])
          redis.call('PEXPIRE', key, ttl * 2)
        else
          add(ck, key, amount, c[5])
          if ck == 'w' and reset[i] == 0 then reset[i] = (sec + span) * 1000 - now end
        end
      end
    end
    out[n] = {failed, wait, used, reset}
  elseif op[1] == 'C' then
    for _, c in ipairs(op[3]) do add(c[2], KEYS[c[1]], c[3], c[4]) end
    for _, key in ipairs(op[4]) do redis.call('ZREM', KEYS[key], op[2]) end
    out[n] = 0
  else
    for _, l in ipairs(op[2]) do
      redis.call('ZADD', KEYS[l[1]], 'XX', now + ttl, l[2])
      redis.call('PEXPIRE', KEYS[l[1]], ttl * 2)
    end
    out[n] = 0
  end
end
return cmsgpack.pack(out)
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
LOG_EVERY = 60.0
RETRY_AFTER = 1.0  # after a failure, skip Redis this long: a dead server costs no latency
MAX_BATCH = 256


class RedisEngine(Engine):
    def __init__(self, url: str, timeout: float = 0.5) -> None:
        self.url = url
        self.timeout = timeout
        self.client: Any = None
        self._conn: Any = None
        self._down_until = 0.0
        self._logged = 0.0
        self.up = True
        self._queue: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            health_check_interval=0,
        )
        # One batch is in flight at a time, so one connection, used directly: a pool, its
        # lock and the command layer cost as much CPU as the call itself.
        self._conn = self.client.connection_pool.make_connection()
        metrics.LIMITS_UP.labels("redis").set(1)

    async def aclose(self) -> None:
        if self._sender is not None:
            await asyncio.wait([self._sender], timeout=2)
        if self._conn is not None:
            await self._conn.disconnect()
        if self.client is not None:
            await self.client.aclose()

    async def _eval(self, keys: list[str], packed: bytes) -> Any:
        """EVALSHA on the engine's connection; loads the script when Redis lacks it (a fresh
        or restarted server)."""
        from redis.exceptions import NoScriptError

        conn = self._conn
        cmd = conn.pack_command("EVALSHA", SCRIPT_SHA, len(keys), *keys, packed)
        await conn.send_packed_command(cmd, check_health=False)
        try:
            return await conn.read_response()
        except NoScriptError:
            await conn.send_command("SCRIPT", "LOAD", SCRIPT, check_health=False)
            await conn.read_response()
            await conn.send_packed_command(cmd, check_health=False)
            return await conn.read_response()

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

    async def _op(self, op: list[Any]) -> Any:
        """Queue one op (storage keys as strings) for the next script call; None when Redis
        is unreachable."""
        if not self.up and time.monotonic() < self._down_until:
            return None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())
        return await fut

    async def _send(self) -> None:
        import redis.exceptions

        errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            results: list[Any] = []
            try:
                index: dict[str, int] = {}
                ops = [_indexed(op, index) for op, _ in batch]
                packed = _pack([WINDOW_SECONDS, int(LEASE_TTL * 1000), ops])
                results = _unpack(await self._eval(list(index), packed))
                self._ok()
            except errors as e:
                # The reply may still come: never read it as the next call's.
                await self._conn.disconnect()
                self._failed(e)
            except Exception:
                # A script error (a Redis without Lua's cmsgpack, say): a bug or a setup
                # problem, not an outage; served under the same policy, logged in full.
                log.exception("limits: the Redis script failed")
                await self._conn.disconnect()
            finally:
                # Every waiting request gets an answer, whatever happened (None: no verdict).
                if len(results) != len(batch):
                    results = [None] * len(batch)
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)

    async def admit(self, checks: list[Check], lease: str, dry: bool = False) -> Outcome | None:
        out = await self._op(
            ["A", dry, lease, [[c.key, c.kind, c.limit, c.amount, c.ttl] for c in checks]]
        )
        if out is None:
            return None
        failed, wait, used, reset = out
        # cmsgpack turns an empty table into a map: no checks means empty lists.
        return Outcome(
            failed - 1, math.inf if wait < 0 else wait / 1000,
            list(used) if used else [], [r / 1000 for r in reset] if reset else [],
        )

    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        await self._op(["C", lease, [list(i) for i in items], release or []])

    async def release(self, keys: list[str], lease: str) -> None:
        await self.charge([], keys, lease)

    async def renew(self, keys: list[str], leases: list[str]) -> None:
        await self._op(["R", [[k, lease] for k, lease in zip(keys, leases, strict=True)]])


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


def _indexed(op: list[Any], index: dict[str, int]) -> list[Any]:
    """The op with its storage keys replaced by their 1-based index into KEYS (`index`)."""

    def ix(key: str) -> int:
        return index.setdefault(key, len(index) + 1)

    kind = op[0]
    if kind == "A":
        return ["A", op[1], op[2], [[ix(c[0]), *c[1:]] for c in op[3]]]
    if kind == "C":
        return ["C", op[1], [[ix(c[1]), c[0], c[2], c[3]] for c in op[2]],
                [ix(k) for k in op[3]]]
    return ["R", [[ix(k), lease] for k, lease in op[1]]]


def _safe(url: str) -> str:
    """The URL without a password."""
    from urllib.parse import urlsplit

    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname or ''}:{p.port or 6379}{p.path}"
