#!lua
-- reconcile_live: make the cold keys of one shard that Redis holds agree with Postgres plus the pending
-- Redis deltas, while the caller holds the shard's flush lease.
--
-- A missing key is left missing: it is loaded from Postgres when next needed (lib/cold.lua). For a
-- count key that is present, the true value of each counter is computed here, atomically, from the
-- Postgres value the caller read (which cannot move while the lease is held: only the flusher writes
-- counters) plus what is pending in Redis: the delta hash and the view drains list and, when it is not
-- yet in the flush ledger, the captured batch (hash and drains). Each field is then compared with the
-- live value and set only if it differs: an increment that arrives before or after this call is part
-- of both the live value and the delta, so it is never lost. A like state or subscription with a
-- pending value (delta, or an uncommitted captured batch) is newer than Postgres and is left alone;
-- otherwise it is set to the Postgres value. A key without a TTL that no dirty set lists (nothing of
-- it is pending) gets its idle TTL back.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:delta      HASH    "<counter>:<id>" -> increment not yet in Postgres
--   KEYS[2]  eng:{s:N}:batch      HASH    captured increments (counted only when ARGV[3] is "1")
--   KEYS[3]  eng:{s:N}:batch_id   STRING  id of the captured batch
--   KEYS[4]  eng:{s:N}:lease      STRING  "<owner>|<expiry ms>": the shard's flush lease
--   KEYS[5]  eng:{s:N}:sdelta     HASH    like states not yet in Postgres
--   KEYS[6]  eng:{s:N}:sbatch     HASH    captured like states
--   KEYS[7]  eng:{s:N}:subdelta   HASH    subscriptions not yet in Postgres
--   KEYS[8]  eng:{s:N}:subbatch   HASH    captured subscriptions
--   KEYS[9]  eng:{s:N}:vdelta     LIST    applied view drains not yet in Postgres (apply_views.lua)
--   KEYS[10] eng:{s:N}:vbatch     LIST    captured view drains (counted only when ARGV[3] is "1")
--   KEYS[11] eng:{s:N}:dirty      SET     cold keys changed since the last capture
--   KEYS[12] eng:{s:N}:dirtybatch SET     the captured ones
--   KEYS[13] eng:{s:N}:rec        HASH    records: "l:<key>" -> load tokens (lib/cold.lua)
--   KEYS[14] eng:{s:N}:recexp     ZSET    record -> expiry (ms)
--   and the cold keys named in ARGV (same hash tag)
-- ARGV:
--   ARGV[1]  lease owner token (the call refuses to run when the caller no longer holds the lease)
--   ARGV[2]  the batch id the caller saw ("" when none)
--   ARGV[3]  "1" when that batch is not in the flush ledger (its increments are still pending)
--   ARGV[4]  "1" when the caller changed Postgres for these keys outside a flush (settled fallback
--            writes): loads of them under way read Postgres before, and their seeds are refused
--   ARGV[5]  idle TTL of counts, seconds;  ARGV[6]  idle TTL of like states and subscriptions
--   ARGV[7]  number of count keys C, then C entries: key, id ("<content_id>" or "<creator_id>"),
--            number of counters k, then k pairs counter, Postgres value
--   then     number of state keys S, then S entries: key, "<target_id>|<user_id>", Postgres value
--            (like: 1, -1 or 0; subscription: 1 or 0)
-- Returns {"lost"} when the lease or the batch changed (the caller retries the shard), else
-- {"ok", repaired_fields, drift, repaired_states, repaired_subs, unpinned, f1, old1, new1, ...}
-- (the repaired counter fields, as "<counter>:<id>").

-- @include lease
-- @include entries
-- @include records
-- @include cold

local delta, batch, batch_id_key, lease_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sdelta, sbatch, subdelta, subbatch = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local drains, drains_batch, dirty, dirtybatch = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local rec_key, recexp_key = KEYS[13], KEYS[14]
local owner, seen_batch, batch_pending, changed = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4] == '1'
local counts_ttl, state_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])

if lease.holder(lease_key) ~= owner then
  return {'lost'}
end
if (redis.call('GET', batch_id_key) or '') ~= seen_batch then
  return {'lost'}
end

local function num(value)
  return tonumber(value or '0')
end

-- "<counter>:<id>" -> increment pending in the view drain lists, summed on first use (one LRANGE
-- and one unpack per drain, whatever the number of fields asked for)
local drained
local function pending_drains()
  drained = {}
  local function add(counter, increments)
    for content_id, n in pairs(increments) do
      local field = counter .. ':' .. content_id
      drained[field] = (drained[field] or 0) + n
    end
  end
  local lists = {drains}
  if batch_pending then
    lists[2] = drains_batch
  end
  for _, key in ipairs(lists) do
    for _, drain in ipairs(redis.call('LRANGE', key, 0, -1)) do
      local _, views, watch, signals = entries.unpack(drain)
      add('views', views)
      add('watch_seconds', watch)
      for counter, increments in pairs(signals) do
        add(counter, increments)
      end
    end
  end
end

-- A present key without a TTL that no dirty set lists has nothing pending: it gets its TTL back.
local unpinned = 0
local function unpin(key, ttl_seconds)
  if redis.call('TTL', key) == -1 and redis.call('SISMEMBER', dirty, key) == 0
      and redis.call('SISMEMBER', dirtybatch, key) == 0 then
    redis.call('EXPIRE', key, ttl_seconds)
    unpinned = unpinned + 1
  end
end

local repaired, drift, repaired_states, repaired_subs = 0, 0, 0, 0
local changes = {}
local i = 7
for _ = 1, tonumber(ARGV[i]) do
  local key, id, k = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local present = redis.call('EXISTS', key) == 1
  if changed then
    cold.forget_loads(rec_key, recexp_key, {key})
  end
  i = i + 3
  for _ = 1, k do
    local counter, base = ARGV[i + 1], tonumber(ARGV[i + 2])
    i = i + 2
    if present then
      if drained == nil then
        pending_drains()
      end
      local name = counter .. ':' .. id
      local target = base + num(redis.call('HGET', delta, name)) + (drained[name] or 0)
      if batch_pending then
        target = target + num(redis.call('HGET', batch, name))
      end
      local current = num(redis.call('HGET', key, counter))
      if current ~= target then
        redis.call('HSET', key, counter, string.format('%d', target))
        repaired = repaired + 1
        drift = drift + math.abs(target - current)
        changes[#changes + 1] = name
        changes[#changes + 1] = string.format('%d', current)
        changes[#changes + 1] = string.format('%d', target)
      end
    end
  end
  if present then
    unpin(key, counts_ttl)
  end
end

i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  local key, pair, value = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 3
  if changed then
    cold.forget_loads(rec_key, recexp_key, {key})
  end
  if redis.call('EXISTS', key) == 1 then
    local like = string.find(key, '}:lk:', 1, true) ~= nil
    local pending, captured = sdelta, sbatch
    if not like then
      pending, captured = subdelta, subbatch
    end
    local newer = redis.call('HEXISTS', pending, pair) == 1
      or (batch_pending and redis.call('HEXISTS', captured, pair) == 1)
    if not newer and redis.call('GET', key) ~= value then
      redis.call('SET', key, value, 'KEEPTTL')
      if like then
        repaired_states = repaired_states + 1
      else
        repaired_subs = repaired_subs + 1
      end
    end
    if not newer then
      unpin(key, state_ttl)
    end
  end
end

local result = {'ok', repaired, drift, repaired_states, repaired_subs, unpinned}
for _, v in ipairs(changes) do
  result[#result + 1] = v
end
return result
