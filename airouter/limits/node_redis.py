"""Node slots in Redis, shared by every replica: one Lua script, atomic on the server, on
Redis's clock.

Per node, three keys in one hash slot: `h`, the leases held (score: when each expires unless
renewed, so a replica that dies frees its slots after `slot_lease_ttl`); `q`, the waiters in
arrival order; `a`, when each waiter expires unless it asks again.

A waiter polls: it asks again after a short sleep that doubles up to POLL_MAX. Polling was
chosen over a wake-up channel (pub/sub, blocking pops) because it needs no connection per
waiter, no message that a crash can lose, and nothing to clean up: a waiter that stops asking
leaves the queue by itself. A slot goes to the first `limit - held` waiters in arrival order,
so a newcomer never overtakes the queue; the cost is at most POLL_MAX of latency on a
handover, small beside a generation. Calls from one worker are coalesced as in redis_engine:
the ops that arrive while a call is in flight go together in the next."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from typing import Any

import msgspec

from airouter.backends.node_slots import FULL, GRANTED, TIMEOUT, SlotStore
from airouter.limits import resp
from airouter.limits.policy import PREFIX

log = logging.getLogger("airouter.limits")

# KEYS: three per node (held, queue, alive). ARGV[1]: msgpack [lease ttl ms, waiter ttl ms,
# ops], an op being [kind, index of the node's first key, lease, limit, max_queue]:
#   "T" take: result 1 granted, 2 queued (ask again), 0 the queue is full
#   "G" give back a slot or leave the queue; "N" renew a held lease
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local batch = cmsgpack.unpack(ARGV[1])
local ttl, wttl = batch[1], batch[2]
local out = {}
for n, op in ipairs(batch[3]) do
  local held, queue, alive = KEYS[op[2]], KEYS[op[2] + 1], KEYS[op[2] + 2]
  local lease = op[3]
  out[n] = 0
  if op[1] == 'T' then
    redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
    local gone = redis.call('ZRANGEBYSCORE', alive, '-inf', now)
    for _, l in ipairs(gone) do redis.call('ZREM', queue, l) end
    if #gone > 0 then redis.call('ZREMRANGEBYSCORE', alive, '-inf', now) end
    local free = op[4] - redis.call('ZCARD', held)
    local rank = redis.call('ZRANK', queue, lease)
    local pos = rank or redis.call('ZCARD', queue)
    if pos < free then
      redis.call('ZADD', held, now + ttl, lease)
      redis.call('PEXPIRE', held, ttl * 2)
      if rank then
        redis.call('ZREM', queue, lease)
        redis.call('ZREM', alive, lease)
      end
      out[n] = 1
    elseif rank or pos < op[5] then
      if not rank then redis.call('ZADD', queue, now, lease) end
      redis.call('ZADD', alive, now + wttl, lease)
      redis.call('PEXPIRE', queue, wttl * 2)
      redis.call('PEXPIRE', alive, wttl * 2)
      out[n] = 2
    end
  elseif op[1] == 'G' then
    redis.call('ZREM', held, lease)
    redis.call('ZREM', queue, lease)
    redis.call('ZREM', alive, lease)
  else
    redis.call('ZADD', held, 'XX', now + ttl, lease)
    redis.call('PEXPIRE', held, ttl * 2)
  end
end
return cmsgpack.pack(out)
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
QUEUED = 2
POLL_FIRST = 0.005  # seconds before a waiter asks again; doubles up to POLL_MAX
POLL_MAX = 0.05
WAITER_TTL = 2.0  # a waiter that stopped asking leaves the queue after this long
RETRY_AFTER = 1.0  # after a failure, skip Redis this long: a dead server costs no latency
LOG_EVERY = 60.0
MAX_BATCH = 256
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


def _keys(key: str) -> tuple[str, str, str]:
    base = f"{PREFIX}n:{{{key}}}:"  # {hash tag}: one cluster slot for the three
    return base + "h", base + "q", base + "a"


class RedisSlots(SlotStore):
    def __init__(self, url: str, lease_ttl: float = 30.0, timeout: float = 0.5) -> None:
        self.url = url
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        self.client: Any = None
        self._conn: Any = None
        self._queue: list[tuple[list[Any], asyncio.Future[Any] | None]] = []
        self._sender: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._logged = 0.0
        self.up = True
        self.held: dict[str, str] = {}  # lease -> node key, renewed while held
        self._prefix = os.urandom(6).hex()
        self._seq = 0
        self._keys: dict[str, tuple[str, str, str]] = {}

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            health_check_interval=0,
        )
        self._conn = self.client.connection_pool.make_connection()
        self._renewer = asyncio.create_task(self._renew_forever())

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        for lease, key in list(self.held.items()):
            self.give(key, lease)
        if self._sender is not None:
            await asyncio.wait([self._sender], timeout=2)
        if self._conn is not None:
            await self._conn.disconnect()
        if self.client is not None:
            await self.client.aclose()

    async def take(
        self, key: str, limit: int, max_queue: int, queue_timeout: float
    ) -> tuple[int, str] | None:
        self._seq += 1
        lease = f"{self._prefix}:{self._seq}"
        deadline = time.monotonic() + queue_timeout
        pause = POLL_FIRST
        try:
            while True:
                got = await self._op(["T", key, lease, limit, max_queue])
                if got == GRANTED:
                    self.held[lease] = key
                    return GRANTED, lease
                if got != QUEUED:
                    return None if got is None else (FULL, "")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.give(key, lease)
                    return TIMEOUT, ""
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, POLL_MAX)
        except BaseException:  # cancelled: whether queued or just granted, nothing is kept
            self.give(key, lease)
            raise

    def give(self, key: str, lease: str) -> None:
        self.held.pop(lease, None)
        self._push(["G", key, lease], None)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            for lease, key in list(self.held.items()):
                self._push(["N", key, lease], None)

    def _push(self, op: list[Any], fut: asyncio.Future[Any] | None) -> None:
        if fut is None and not self.up and time.monotonic() < self._down_until:
            return  # Redis is down: the lease expires there by itself
        self._queue.append((op, fut))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())

    async def _op(self, op: list[Any]) -> Any:
        """The op's result from the next script call; None when Redis is unreachable."""
        if not self.up and time.monotonic() < self._down_until:
            return None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._push(op, fut)
        return await fut

    async def _eval(self, keys: list[str], packed: bytes) -> Any:
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

    async def _send(self) -> None:
        import redis.exceptions

        errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            results: list[Any] = []
            try:
                index: dict[str, int] = {}
                ops = [[op[0], self._index(op[1], index), *op[2:]] for op, _ in batch]
                packed = _pack([int(self.lease_ttl * 1000), int(WAITER_TTL * 1000), ops])
                results = _unpack(await self._eval(list(index), packed))
                self._ok()
            except errors as e:
                with contextlib.suppress(Exception):
                    await self._conn.disconnect()  # a late reply must not answer the next call
                self._failed(e)
            except Exception:
                log.exception("limits: the Redis node-slot script failed")
                with contextlib.suppress(Exception):
                    await self._conn.disconnect()
                self._down_until = time.monotonic() + RETRY_AFTER
                self.up = False
            finally:
                if len(results) != len(batch):
                    results = [None] * len(batch)
                for (_, fut), result in zip(batch, results, strict=True):
                    if fut is not None and not fut.done():
                        fut.set_result(result)

    def _index(self, key: str, index: dict[str, int]) -> int:
        """The 1-based index of `key`'s first storage key in KEYS, adding its three."""
        keys = self._keys.get(key)
        if keys is None:
            keys = self._keys[key] = _keys(key)
        first = index.get(keys[0])
        if first is None:
            first = len(index) + 1
            for k in keys:
                index[k] = len(index) + 1
        return first

    def _failed(self, e: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + RETRY_AFTER
        if self.up or now - self._logged >= LOG_EVERY:
            log.error("limits: Redis at %s unreachable for node slots (%s); applying "
                      "limits_on_redis_failure", resp.safe_url(self.url), type(e).__name__)
            self._logged = now
        self.up = False

    def _ok(self) -> None:
        if not self.up:
            self.up = True
            log.warning("limits: Redis at %s is back for node slots", resp.safe_url(self.url))

