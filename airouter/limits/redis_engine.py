"""The Redis store: each admission is one EVALSHA of a Lua script, atomic on the server, so
replicas never race between reading a counter and raising it. Time is Redis's own clock."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from airouter.limits import metrics
from airouter.limits.engine import LEASE_TTL, WINDOW_SECONDS, Check, Engine, Outcome

log = logging.getLogger("airouter.limits")

# KEYS: one per check. ARGV: dry, lease, lease ttl (ms), window (s), then per check
# kind, limit, amount, ttl.
# Returns {failed (0 = admitted), wait ms (-1 = never), used..., reset ms...}.
ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local dry = ARGV[1] == '1'
local lease, ttl, span = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local n = #KEYS
local used, reset = {}, {}
local failed, wait = 0, 0
for i = 1, n do
  local a = 4 + (i - 1) * 4
  local kind, limit, amount = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local k = KEYS[i]
  local u = 0
  reset[i] = 0
  if kind == 'w' then
    local h = redis.call('HGETALL', k)
    local secs, vals = {}, {}
    for j = 1, #h, 2 do
      local s, v = tonumber(h[j]), tonumber(h[j + 1])
      if s <= sec - span then
        redis.call('HDEL', k, h[j])
      else
        u = u + v
        secs[#secs + 1] = s
        vals[s] = v
      end
    end
    table.sort(secs)
    if #secs > 0 then reset[i] = (secs[1] + span) * 1000 - now end
    if failed == 0 and u + amount > limit then
      failed, wait = i, -1
      local need, freed = u + amount - limit, 0
      for _, s in ipairs(secs) do
        freed = freed + vals[s]
        if freed >= need then
          wait = (s + span) * 1000 - now
          break
        end
      end
    end
  elseif kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    u = redis.call('ZCARD', k)
    if failed == 0 and u + amount > limit then failed, wait = i, 1000 end
  else
    u = tonumber(redis.call('GET', k) or '0')
    if failed == 0 and u + amount > limit then failed, wait = i, -1 end
  end
  used[i] = u
end
if failed == 0 and not dry then
  for i = 1, n do
    local a = 4 + (i - 1) * 4
    local kind, amount, kttl = ARGV[a + 1], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    local k = KEYS[i]
    used[i] = used[i] + amount
    if kind == 'w' then
      redis.call('HINCRBY', k, sec, amount)
      redis.call('EXPIRE', k, span + 1)
      if reset[i] == 0 then reset[i] = (sec + span) * 1000 - now end
    elseif kind == 'c' then
      redis.call('ZADD', k, now + ttl, lease)
      redis.call('PEXPIRE', k, ttl * 2)
    else
      redis.call('INCRBY', k, amount)
      if kttl > 0 then redis.call('EXPIRE', k, kttl) end
    end
  end
end
local out = {failed, wait}
for i = 1, n do out[#out + 1] = used[i] end
for i = 1, n do out[#out + 1] = reset[i] end
return out
"""

# KEYS: counters. ARGV: window (s), then per key kind, amount, ttl.
CHARGE = """
local sec = tonumber(redis.call('TIME')[1])
local span = tonumber(ARGV[1])
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 3
  local kind, amount, ttl = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if kind == 'w' then
    redis.call('HINCRBY', KEYS[i], sec, amount)
    redis.call('EXPIRE', KEYS[i], span + 1)
  elseif kind == 'b' then
    redis.call('INCRBY', KEYS[i], amount)
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
  end
end
return 0
"""

# KEYS: lease sets. ARGV: ttl (ms), then one lease per key. Only leases still held are renewed.
RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', until_ms, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]) * 2)
end
return 0
"""

LOG_EVERY = 60.0
RETRY_AFTER = 1.0  # after a failure, skip Redis this long: a dead server costs no latency


class RedisEngine(Engine):
    def __init__(self, url: str, timeout: float = 0.5) -> None:
        self.url = url
        self.timeout = timeout
        self.client: Any = None
        self._scripts: dict[str, Any] = {}
        self._down_until = 0.0
        self._logged = 0.0
        self.up = True

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            health_check_interval=0,
        )
        for name, text in (("admit", ADMIT), ("charge", CHARGE), ("renew", RENEW)):
            self._scripts[name] = self.client.register_script(text)
        metrics.LIMITS_UP.labels("redis").set(1)

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _failed(self, e: Exception) -> None:
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

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self.up and time.monotonic() < self._down_until:
            return None
        import redis.exceptions

        try:
            out = await self._scripts[name](keys=keys, args=args)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            self._failed(e)
            return None
        except asyncio.CancelledError:
            raise
        self._ok()
        return out

    async def admit(self, checks: list[Check], lease: str, dry: bool = False) -> Outcome | None:
        args: list[Any] = ["1" if dry else "0", lease, int(LEASE_TTL * 1000), WINDOW_SECONDS]
        for c in checks:
            args += (c.kind, c.limit, c.amount, c.ttl)
        out = await self._run("admit", [c.key for c in checks], args)
        if out is None:
            return None
        n = len(checks)
        wait = math.inf if out[1] < 0 else out[1] / 1000
        return Outcome(
            int(out[0]) - 1, wait, [int(u) for u in out[2 : 2 + n]],
            [r / 1000 for r in out[2 + n :]],
        )

    async def charge(self, items: list[tuple[str, str, int, int]]) -> None:
        args: list[Any] = [WINDOW_SECONDS]
        for kind, _, amount, ttl in items:
            args += (kind, amount, ttl)
        await self._run("charge", [i[1] for i in items], args)

    async def release(self, keys: list[str], lease: str) -> None:
        if not self.up and time.monotonic() < self._down_until:
            return
        import redis.exceptions

        try:
            async with self.client.pipeline(transaction=False) as p:
                for k in keys:
                    p.zrem(k, lease)
                await p.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            self._failed(e)

    async def renew(self, keys: list[str], leases: list[str]) -> None:
        await self._run("renew", keys, [int(LEASE_TTL * 1000), *leases])


def _safe(url: str) -> str:
    """The URL without a password."""
    from urllib.parse import urlsplit

    p = urlsplit(url)
    host = p.hostname or ""
    return f"{p.scheme}://{host}:{p.port or 6379}{p.path}"
