"""The Lua script behind node slots in Redis (limits.node_redis): atomic on the server, on
Redis's clock, with fairness.scheduler's rules (priority, then start-time fair queueing by key
weight, shedding of the newest waiter of the lowest priority) written again in Lua.

Per backend ("pool"), keys in one hash slot (`{pool}`): nine for its one queue and one per
node for the node's slots:
  a   the waiters (score: when each expires unless it asks again);
  s   a hash: per waiter `w:<lease>` = "priority start finish seq key", and `n`, the arrival
      counter;
  x   leases shed from the queue (score: when the mark expires), told so when they next ask;
  q0, q1, q2   the waiters of each priority (high, normal, low), scored by their start tag;
  f0, f1, f2   per priority, each key's finish tag and the virtual time (field "\\0v");
      deleted when no waiter of the priority is left: tags start again from zero;
  h:<node>  the leases held on a node (score: when each expires unless renewed).

ARGV[1]: msgpack [lease ttl ms, waiter ttl ms, ops]. An op:
  ["T", pool, lease, limit, max_queue, key, priority, weight, nodes]  take: {1, i} granted on
      the i-th (0-based) of `nodes`, 2 queued (ask again), 0 the queue is full, 3 shed (a
      request of a higher priority took the place)
  ["G", pool, lease, nodes]  give back a slot (on any of `nodes`) or leave the queue
  ["N", node, lease]  renew a held lease
`pool`: the index in KEYS of the pool's first key; `nodes`: the indexes in KEYS of the nodes'
h keys the request may use, in order of preference. A waiter's place is its rank: the waiters
of higher priorities, then those of its own with a smaller start tag (equal tags: arrival
order). It gets a slot when its rank is below the free slots of the nodes it may use: on the
first of them with one free. (Waiters that may use other nodes count in its rank: with
retries that exclude nodes, the order is close to, not exactly, the scheduler's.)"""

from __future__ import annotations

SCRIPT = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local batch = cmsgpack.unpack(ARGV[1])
local ttl, wttl = batch[1], batch[2]
local VT = '\0v'
local out = {}

local function num(x) return string.format('%.17g', x) end

local function keys_of(i)
  return {a = KEYS[i], s = KEYS[i + 1], x = KEYS[i + 2],
          q = {KEYS[i + 3], KEYS[i + 4], KEYS[i + 5]}, f = {KEYS[i + 6], KEYS[i + 7], KEYS[i + 8]}}
end

local function info(k, lease)
  local v = redis.call('HGET', k.s, 'w:' .. lease)
  if not v then return nil end
  local p, start, fin, seq, who = string.match(v, '^(%d) (%S+) (%S+) (%d+) (.*)$')
  return {p = tonumber(p), start = tonumber(start), fin = tonumber(fin), seq = tonumber(seq),
          who = who}
end

-- A waiter leaves its queue; `refund`: its key's last tag goes back to its start.
local function leave(k, lease, w, refund)
  local q, f = k.q[w.p + 1], k.f[w.p + 1]
  redis.call('ZREM', q, lease)
  redis.call('ZREM', k.a, lease)
  redis.call('HDEL', k.s, 'w:' .. lease)
  if redis.call('ZCARD', q) == 0 then
    redis.call('DEL', f)
  elseif refund and tonumber(redis.call('HGET', f, w.who)) == w.fin then
    redis.call('HSET', f, w.who, num(w.start))
  end
end

local function hold(h, lease)
  redis.call('ZADD', h, now + ttl, lease)
  redis.call('PEXPIRE', h, ttl * 2)
end

local function touch(k, lease)
  redis.call('ZADD', k.a, now + wttl, lease)
  for _, key in ipairs({k.a, k.s, k.x, k.q[1], k.q[2], k.q[3], k.f[1], k.f[2], k.f[3]}) do
    redis.call('PEXPIRE', key, wttl * 2)
  end
end

local function ahead(k, p)
  local n = 0
  for j = 1, p do n = n + redis.call('ZCARD', k.q[j]) end
  return n
end

-- The newest waiter of the lowest priority below p (0-based), or nil.
local function victim(k, p)
  for j = 3, p + 2, -1 do
    local members = redis.call('ZRANGE', k.q[j], 0, -1)
    if #members > 0 then
      local best, best_w = nil, nil
      for _, l in ipairs(members) do
        local w = info(k, l)
        if w and (best_w == nil or w.seq > best_w.seq) then best, best_w = l, w end
      end
      return best, best_w
    end
  end
  return nil
end

local function take(k, op)
  local lease, limit, max_queue, nodes = op[3], op[4], op[5], op[9]
  local room, free = {}, 0
  for j, i in ipairs(nodes) do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    room[j] = math.max(0, limit - redis.call('ZCARD', KEYS[i]))
    free = free + room[j]
  end
  -- A slot on the first node with one free.
  local function grant()
    for j, i in ipairs(nodes) do
      if room[j] > 0 then
        hold(KEYS[i], lease)
        return {1, j - 1}
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', k.x, '-inf', now)
  for _, l in ipairs(redis.call('ZRANGEBYSCORE', k.a, '-inf', now)) do
    local w = info(k, l)
    if w then leave(k, l, w, true) else redis.call('ZREM', k.a, l) end
  end
  if redis.call('ZREM', k.x, lease) == 1 then return 3 end
  local w = info(k, lease)
  if w then
    local f = k.f[w.p + 1]
    if ahead(k, w.p) + redis.call('ZRANK', k.q[w.p + 1], lease) < free then
      leave(k, lease, w, false)
      if redis.call('EXISTS', f) == 1 and tonumber(redis.call('HGET', f, VT) or '0') < w.start then
        redis.call('HSET', f, VT, num(w.start))
      end
      return grant()
    end
    touch(k, lease)
    return 2
  end
  local who, p, weight = op[6], op[7], op[8]
  local q, f = k.q[p + 1], k.f[p + 1]
  local waiting = redis.call('ZCARD', k.q[1]) + redis.call('ZCARD', k.q[2]) +
    redis.call('ZCARD', k.q[3])
  if waiting == 0 and free > 0 then
    return grant()
  end
  local vt = tonumber(redis.call('HGET', f, VT) or '0')
  local start = tonumber(redis.call('HGET', f, who) or '0')
  if start < vt then start = vt end
  local fin = start + 1 / weight
  if ahead(k, p) + redis.call('ZCOUNT', q, '-inf', num(start)) < free then
    -- Ahead of enough waiters to have a free slot now: it took its round.
    if redis.call('ZCARD', q) > 0 then
      redis.call('HSET', f, who, num(fin))
      if vt < start then redis.call('HSET', f, VT, num(start)) end
    end
    return grant()
  end
  if waiting >= max_queue then
    if max_queue <= 0 or waiting > max_queue then return 0 end
    local shed, sw = victim(k, p)
    if shed == nil then return 0 end
    leave(k, shed, sw, true)  -- of a lower priority: this one's tags stay as they are
    redis.call('ZADD', k.x, now + wttl, shed)
  end
  local seq = redis.call('HINCRBY', k.s, 'n', 1)
  redis.call('ZADD', q, num(start), lease)
  redis.call('HSET', f, who, num(fin))
  if redis.call('HEXISTS', f, VT) == 0 then redis.call('HSET', f, VT, num(vt)) end
  redis.call('HSET', k.s, 'w:' .. lease, p .. ' ' .. num(start) .. ' ' .. num(fin) .. ' ' ..
    seq .. ' ' .. who)
  touch(k, lease)
  return 2
end

for n, op in ipairs(batch[3]) do
  local lease = op[3]
  out[n] = 0
  if op[1] == 'T' then
    out[n] = take(keys_of(op[2]), op)
  elseif op[1] == 'G' then
    local k = keys_of(op[2])
    for _, i in ipairs(op[4]) do redis.call('ZREM', KEYS[i], lease) end
    redis.call('ZREM', k.x, lease)
    local w = info(k, lease)
    if w then leave(k, lease, w, true) end
  else
    redis.call('ZADD', KEYS[op[2]], 'XX', now + ttl, lease)
    redis.call('PEXPIRE', KEYS[op[2]], ttl * 2)
  end
end
return cmsgpack.pack(out)
"""

# A pool's queue keys, in the order the script reads them from its first.
SUFFIXES = ("a", "s", "x", "q0", "q1", "q2", "f0", "f1", "f2")
SHED_RESULT = 3
