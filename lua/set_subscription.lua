#!lua
-- set_subscription: subscribe a user to a creator, or unsubscribe, in one round trip.
--
-- Checks the idempotency record, reads the user's subscription, moves the creator's live subscriber
-- count, records the count delta and the new state for the flusher, and returns the new state and
-- count -- atomically, in one slot (the creator's shard: N = shard of the creator id). The
-- subscription and the count are cold keys (lib/cold.lua); a subscription the row filter proves new is 0
-- and created only if the call changes it.
--
-- Key layout (hash tag {s:N} of the creator):
--   KEYS[1]  eng:{s:N}:cr:<creator_id>            HASH    the creator's live counts (subscribers)
--   KEYS[2]  eng:{s:N}:sb:<creator_id>|<user_id>  STRING  the user's subscription: 1 or 0
--   KEYS[3]  eng:{s:N}:delta     HASH  "subscribers:<creator_id>" -> increment not yet in Postgres
--   KEYS[4]  eng:{s:N}:subdelta  HASH  "<creator_id>|<user_id>" -> state not yet in Postgres (1, 0)
--   KEYS[5]  eng:{s:N}:rec       HASH  records: ARGV[6] -> "<fingerprint>\n<state> <subscribers>";
--                                     "l:<key>" -> the load token of a missing cold key (lib/cold.lua)
--   KEYS[6]  eng:{s:N}:recexp    ZSET  record -> expiry (ms)
--   KEYS[7]  eng:{s:N}:dirty     SET   cold keys changed since the last capture
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter: keys new to Postgres (lib/cold.lua)
-- ARGV:
--   ARGV[1]  creator id
--   ARGV[2]  user id
--   ARGV[3]  action: subscribe | unsubscribe
--   ARGV[4]  idempotency record lifetime, seconds
--   ARGV[5]  request fingerprint ("" when the request has no Idempotency-Key)
--   ARGV[6]  the record's name in KEYS[5]
--   ARGV[7]  seeds of missing cold keys, or ""
-- Returns {status, state, subscribers}:
--   status  "changed" | "unchanged" | "replayed" (the stored first answer) | "conflict" (the key
--           was used for a different request; state and count are then the stored ones)
--   state   1 or 0
-- or {"unknown", key, token, ...} when KEYS[1] or KEYS[2] is missing (lib/cold.lua).

-- @include records
-- @include cold

local counts_key, state_key, delta_key, subdelta_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rec_key, recexp_key, dirty_key = KEYS[5], KEYS[6], KEYS[7]
local creator_id, user_id, action = ARGV[1], ARGV[2], ARGV[3]
local record_ttl_seconds, fingerprint, record = tonumber(ARGV[4]), ARGV[5], ARGV[6]

if fingerprint ~= '' then
  local stored = records.get(rec_key, recexp_key, record)
  if stored then
    local first, state, subscribers = string.match(stored, '^(.-)\n(%d+) (-?%d+)$')
    local status = (first == fingerprint) and 'replayed' or 'conflict'
    return {status, tonumber(state), tonumber(subscribers)}
  end
end

-- A state the row filter proves new is 0 and is created only if this call changes it (`new`)
local unknown, deferred = cold.load(ARGV[7], rec_key, recexp_key, {counts_key, state_key},
  {[state_key] = true})
if unknown then
  return unknown
end
local new = deferred[state_key]

local current = new and 0 or tonumber(redis.call('GET', state_key))
local target = (action == 'subscribe') and 1 or 0

local status = 'unchanged'
if target ~= current then
  status = 'changed'
  local amount = target - current
  redis.call('HINCRBY', counts_key, 'subscribers', amount)
  redis.call('HINCRBY', delta_key, 'subscribers:' .. creator_id, amount)
  cold.put(rec_key, dirty_key, state_key, target, new, {counts_key})
  redis.call('HSET', subdelta_key, creator_id .. '|' .. user_id, target)
end

local subscribers = tonumber(redis.call('HGET', counts_key, 'subscribers') or '0')
if fingerprint ~= '' then
  local answer = string.format('%s\n%d %d', fingerprint, target, subscribers)
  records.put(rec_key, recexp_key, record, answer, record_ttl_seconds)
end
return {status, target, subscribers}
