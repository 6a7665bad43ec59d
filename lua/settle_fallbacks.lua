#!lua
-- settle_fallbacks: for pairs the api wrote straight to Postgres while Redis was unreachable, drop the
-- like states and subscriptions Redis still holds pending for them (they predate the Postgres write),
-- set the row filter's bits of those pairs, items and creators (Postgres has rows for them that no
-- flush wrote), then return what stays pending for the touched items and creators, in one atomic step,
-- while the caller (reconcile) holds the shard's flush lease.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:lease     STRING "<owner>|<expiry ms>": the shard's flush lease (lib/lease.lua)
--   KEYS[2]  eng:{s:N}:batch_id  STRING id of the captured batch
--   KEYS[3]  eng:{s:N}:delta     HASH   "<counter>:<id>" -> increment not yet in Postgres
--   KEYS[4]  eng:{s:N}:batch     HASH   captured increments
--   KEYS[5]  eng:{s:N}:sdelta    HASH   "<content_id>|<user_id>" -> like state not yet in Postgres
--   KEYS[6]  eng:{s:N}:sbatch    HASH   captured like states
--   KEYS[7]  eng:{s:N}:subdelta  HASH   "<creator_id>|<user_id>" -> subscription not yet in Postgres
--   KEYS[8]  eng:{s:N}:subbatch  HASH   captured subscriptions
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter: keys new to Postgres (lib/cold.lua)
-- ARGV:
--   ARGV[1]  lease owner token;  ARGV[2]  lease duration, ms (the lease is renewed)
--   ARGV[3]  the batch id the caller saw ("" when none)
--   ARGV[4]  "1" when that batch is not in the flush ledger (its contents are still pending)
--   then     L, L like-state fields to drop;  S, S subscription fields to drop
--   then     I, I counter fields of the touched items and creators ("likes:<id>", ...)
-- Returns {"lost"} when the lease or the batch changed, else
-- {"ok", {like states pending for the touched items: f, v, ...}, {subscriptions: f, v, ...},
--  {counter field, pending increment, ...}} -- the captured batch first then the delta, so that a later
-- value of the same field overrides (only when the batch is pending).

-- @include lease
-- @include records
-- @include cold

local lease_key, batch_id_key, delta, batch = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sdelta, sbatch, subdelta, subbatch = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local owner, lease_ms, seen_batch, batch_pending = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4] == '1'

if lease.holder(lease_key) ~= owner then
  return {'lost'}
end
if (redis.call('GET', batch_id_key) or '') ~= seen_batch then
  return {'lost'}
end
lease.take(lease_key, owner, lease_ms)

local prefix = string.match(lease_key, '^(.-}):')
local rows = {}  -- the keys of the logged pairs, items and creators: Postgres has rows for them now
local i = 5
local targets = {}
local function drop(pending, captured, kind)
  local n = tonumber(ARGV[i])
  for _ = 1, n do
    i = i + 1
    local field = ARGV[i]
    rows[#rows + 1] = prefix .. kind .. field
    redis.call('HDEL', pending, field)
    redis.call('HDEL', captured, field)
    targets[string.match(field, '^(.-)|')] = true
  end
  i = i + 1
end
drop(sdelta, sbatch, ':lk:')
drop(subdelta, subbatch, ':sb:')

local function pending_of(pending, captured)
  local out = {}
  local sources = batch_pending and {captured, pending} or {pending}
  for _, hash in ipairs(sources) do
    local all = redis.call('HGETALL', hash)
    for j = 1, #all, 2 do
      if targets[string.match(all[j], '^(.-)|')] then
        out[#out + 1] = all[j]
        out[#out + 1] = all[j + 1]
      end
    end
  end
  return out
end

local counters = {}
local n = tonumber(ARGV[i])
for _ = 1, n do
  i = i + 1
  local field = ARGV[i]
  local counter, id = string.match(field, '^(.-):(.*)$')
  rows[#rows + 1] = prefix .. (counter == 'subscribers' and ':cr:' or ':c:') .. id
  local value = tonumber(redis.call('HGET', delta, field) or '0')
  if batch_pending then
    value = value + tonumber(redis.call('HGET', batch, field) or '0')
  end
  counters[#counters + 1] = field
  counters[#counters + 1] = string.format('%d', value)
end

cold.remember(cold.rows_key(lease_key), rows)

return {'ok', pending_of(sdelta, sbatch), pending_of(subdelta, subbatch), counters}
