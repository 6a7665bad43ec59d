-- reconcile_live: make one shard's live counts, like states and subscriptions agree with Postgres plus the
-- pending Redis deltas, while the caller holds the shard's flush lease.
--
-- The true value of a counter field is computed here, atomically, from the Postgres value the caller read
-- (which cannot move while the lease is held: only the flusher writes counters) plus what is pending in
-- Redis: the delta hash and the view drains list and, when it is not yet in the flush ledger, the
-- captured batch (hash and drains). Each field is
-- then compared with the live value and set only if it differs: an increment that arrives before or
-- after this call is part of both the live value and the delta, so it is never lost.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:live      HASH    "<counter>:<id>" -> live count
--   KEYS[2]  eng:{s:N}:delta     HASH    "<counter>:<id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:batch     HASH    captured increments (counted only when ARGV[3] is "1")
--   KEYS[4]  eng:{s:N}:batch_id  STRING id of the captured batch
--   KEYS[5]  eng:{s:N}:lease     STRING owner of the shard's flush lease
--   KEYS[6]  eng:{s:N}:state     HASH    "<content_id>|<user_id>" -> 1 | -1
--   KEYS[7]  eng:{s:N}:sdelta    HASH    like states not yet in Postgres
--   KEYS[8]  eng:{s:N}:sbatch    HASH    captured like states
--   KEYS[9]  eng:{s:N}:subs      HASH    "<creator_id>|<user_id>" -> 1
--   KEYS[10] eng:{s:N}:subdelta  HASH    subscriptions not yet in Postgres
--   KEYS[11] eng:{s:N}:subbatch  HASH    captured subscriptions
--   KEYS[12] eng:{s:N}:vdelta    LIST    applied view drains not yet in Postgres (apply_views.lua)
--   KEYS[13] eng:{s:N}:vbatch    LIST    captured view drains (counted only when ARGV[3] is "1")
-- ARGV:
--   ARGV[1]  lease owner token (the call refuses to run when the caller no longer holds the lease)
--   ARGV[2]  the batch id the caller saw ("" when none)
--   ARGV[3]  "1" when that batch is not in the flush ledger (its increments are still pending)
--   ARGV[4]  number of counter fields C, then C pairs: field, Postgres value
--   then     number of like states L, then L pairs: field, Postgres value (1, -1, or 0 for no row)
--   then     number of subscriptions S, then S pairs: field, Postgres value (1, or 0 for no row)
-- A state or subscription with a pending value (delta, or an uncommitted captured batch) is newer than
-- Postgres and is left alone.
-- Returns {"lost"} when the lease or the batch changed (the caller retries the shard), else
-- {"ok", repaired_fields, drift, repaired_states, repaired_subs, f1, old1, new1, ...} (the repaired
-- counter fields).

local live, delta, batch, batch_id_key, lease = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local state, sdelta, sbatch = KEYS[6], KEYS[7], KEYS[8]
local subs, subdelta, subbatch = KEYS[9], KEYS[10], KEYS[11]
local drains, drains_batch = KEYS[12], KEYS[13]
local owner, seen_batch, batch_pending = ARGV[1], ARGV[2], ARGV[3] == '1'

if redis.call('GET', lease) ~= owner then
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
      local views, watch, signals = cmsgpack.unpack(drain)
      add('views', views)
      add('watch_seconds', watch)
      for counter, increments in pairs(signals) do
        add(counter, increments)
      end
    end
  end
end

local repaired, drift, repaired_states, repaired_subs = 0, 0, 0, 0
local changes = {}
local i = 4
local count = tonumber(ARGV[i])
for _ = 1, count do
  local field, base = ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 2
  if drained == nil then
    pending_drains()
  end
  local target = base + num(redis.call('HGET', delta, field)) + (drained[field] or 0)
  if batch_pending then
    target = target + num(redis.call('HGET', batch, field))
  end
  local current = num(redis.call('HGET', live, field))
  if current ~= target then
    redis.call('HSET', live, field, string.format('%d', target))
    repaired = repaired + 1
    drift = drift + math.abs(target - current)
    changes[#changes + 1] = field
    changes[#changes + 1] = string.format('%d', current)
    changes[#changes + 1] = string.format('%d', target)
  end
end

local function rebuild(hash, pending, captured, n)
  local fixed = 0
  for _ = 1, n do
    local field, value = ARGV[i + 1], ARGV[i + 2]
    i = i + 2
    local newer = redis.call('HEXISTS', pending, field) == 1
      or (batch_pending and redis.call('HEXISTS', captured, field) == 1)
    if not newer then
      local current = redis.call('HGET', hash, field) or '0'
      if current ~= value then
        if value == '0' then
          redis.call('HDEL', hash, field)
        else
          redis.call('HSET', hash, field, value)
        end
        fixed = fixed + 1
      end
    end
  end
  return fixed
end

i = i + 1
repaired_states = rebuild(state, sdelta, sbatch, tonumber(ARGV[i]))
i = i + 1
repaired_subs = rebuild(subs, subdelta, subbatch, tonumber(ARGV[i]))

local result = {'ok', repaired, drift, repaired_states, repaired_subs}
for _, v in ipairs(changes) do
  result[#result + 1] = v
end
return result
