"""The Lua script behind the Redis store: every admission, charge and renewal of a batch in
one atomic call."""

from __future__ import annotations

import hashlib

# ARGV[1]: msgpack [window s, lease ttl ms, worker id, workers key, specs, ops]. `specs` maps a
# Spec's number to its checks, one flat array of (kind, key, limit, amount, ttl) * n, where an
# amount of -1 stands for the request's prompt tokens. An op is one flat array, one of
#   ["P", spec, prompt]  admit a request of a spec; result
#        [failed (0 = admitted), wait s (-1 = never), used * n, reset s * n]
#   ["Q", spec, tokens, release]  charge tokens to the spec's token-counting checks (those
#        whose amount is -1) and, if release, end the request (one less in flight)
#   ["A", dry, (kind, key, limit, amount, ttl) * n]  admit checks given in full; as P
#   ["C", n, (kind, key, amount, ttl) * n, concurrency key * m]  charge; one less in flight
#   ["R", (concurrency key, count) * n]  first in its call: the worker is alive and holds
#        `count` under each key (what the worker counted itself, repairing any drift)
# Returns msgpack: one result per op (0 for Q, C and R). The keys travel inside the argument,
# not in KEYS: one call touches the keys of many requests (many hash slots), so the script is
# for a single Redis, not a Cluster, either way.
#
# A window (rpm, tpm) is a hash of one-second buckets plus two fields: "n", their sum, and "o",
# the oldest bucket's second. A check reads those two; the buckets are read only when the
# oldest has left the window (about once a second per busy key) or to tell a refused client
# how long to wait. Requests in flight (max_concurrent) are a hash of worker id -> count; a
# worker counts while its score in the workers set is in the future (every call that changes
# its counts, and every R, moves it a lease TTL on), and a dead worker's field is dropped by
# the next call that reads the key. Within one call every counter is read once and written
# once, at the end, whatever number of requests touch it.
SCRIPT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local now_ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local batch = cmsgpack.unpack(ARGV[1])
local span, ttl, wid, wkey, specs = batch[1], batch[2], batch[3], batch[4], batch[5]
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

-- Requests in flight under a concurrency key: n, every live worker's count; own, this
-- worker's (both read once); p, what this call changed of this worker's before reading it.
local live = nil
local function conc(key)
  local c = entry(L, key)
  if c.n == nil then
    if live == nil then
      live = {}
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', wkey, now_ms, '+inf')) do live[id] = true end
    end
    local h = redis.call('HGETALL', key)
    local n, own, dead = 0, 0, {}
    for j = 1, #h, 2 do
      if h[j] == wid then
        own = tonumber(h[j + 1])
      elseif live[h[j]] then
        n = n + tonumber(h[j + 1])
      else
        dead[#dead + 1] = h[j]
      end
    end
    if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
    c.own = own + c.p
    c.n = n + c.own
  end
  return c
end

local function hold(key, amount)
  local c = entry(L, key)
  c.p = c.p + amount
  if c.n then c.n, c.own = c.n + amount, c.own + amount end
end

-- Admit the k checks at s[o + 1 ...] (5 fields each; an amount of -1 is `prompt`).
local function admit(s, o, k, prompt, dry)
  local res = {0, 0}
  local failed, wait = 0, 0
  for i = 1, k do
    local j = o + (i - 1) * 5
    local ck, key, limit, amount = s[j + 1], s[j + 2], s[j + 3], s[j + 4]
    if amount < 0 then amount = prompt end
    local u, r, w = 0, 0, nil
    if ck == 'w' then
      local win = window(key)
      u = win.u
      if win.o then r = win.o + span - now end
      if u + amount > limit and failed == 0 then w = wait_for(key, u + amount - limit) end
    elseif ck == 'c' then
      u = conc(key).n
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
      local j = o + (i - 1) * 5
      local ck, key, amount = s[j + 1], s[j + 2], s[j + 4]
      if amount < 0 then amount = prompt end
      res[2 + i] = res[2 + i] + amount
      if ck == 'c' then
        hold(key, amount)
      else
        add(ck, key, amount, s[j + 5])
        if ck == 'w' and res[2 + k + i] == 0 then res[2 + k + i] = sec + span - now end
      end
    end
  end
  res[1], res[2] = failed, wait
  return res
end

local alive = false
for n, op in ipairs(batch[6]) do
  local what = op[1]
  if what == 'P' then
    local s = specs[op[2]]
    out[n] = admit(s, 0, #s / 5, op[3], false)
  elseif what == 'Q' then
    local s, tokens = specs[op[2]], op[3]
    for j = 0, #s - 5, 5 do
      if s[j + 4] < 0 then
        if tokens ~= 0 then add(s[j + 1], s[j + 2], tokens, s[j + 5]) end
      elseif op[4] and s[j + 1] == 'c' then
        hold(s[j + 2], -s[j + 4])
      end
    end
    out[n] = 0
  elseif what == 'A' then
    out[n] = admit(op, 2, (#op - 2) / 5, 0, op[2])
  elseif what == 'C' then
    local k = op[2]
    for i = 1, k do
      local j = 2 + (i - 1) * 4
      add(op[j + 1], op[j + 2], op[j + 3], op[j + 4])
    end
    for j = 3 + k * 4, #op do hold(op[j], -1) end
    out[n] = 0
  else
    -- R, first in its call: this worker's counts are what it says it holds.
    alive = true
    for j = 2, #op, 2 do
      local c = conc(op[j])
      c.n, c.own, c.set = c.n - c.own + op[j + 1], op[j + 1], true
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
for key, c in pairs(L) do
  if c.set or c.p ~= 0 then
    alive = true
    if c.own == nil then  -- changed, never read: added to what is there, never below zero
      if redis.call('HINCRBY', key, wid, c.p) <= 0 then redis.call('HDEL', key, wid) end
    elseif c.own > 0 then
      redis.call('HSET', key, wid, c.own)
    else
      redis.call('HDEL', key, wid)
    end
  end
end
if alive then
  redis.call('ZADD', wkey, now_ms + ttl, wid)
  redis.call('ZREMRANGEBYSCORE', wkey, '-inf', now_ms - 10 * ttl)
end
return cmsgpack.pack(out)
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
