-- set_subscription: subscribe a user to a creator, or unsubscribe, in one round trip.
--
-- Checks the idempotency record, reads the user's subscription, moves the creator's live subscriber
-- count, records the count delta and the new state for the flusher, and returns the new state and
-- count -- atomically, in one slot (the creator's shard: N = shard of the creator id).
--
-- Key layout (hash tag {s:N} of the creator):
--   KEYS[1]  eng:{s:N}:live      HASH    "subscribers:<creator_id>" -> live subscriber count
--   KEYS[2]  eng:{s:N}:delta     HASH    "subscribers:<creator_id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:subs      HASH    "<creator_id>|<user_id>" -> 1 (subscribed); absent: none
--   KEYS[4]  eng:{s:N}:subdelta  HASH    "<creator_id>|<user_id>" -> state not yet in Postgres (1, 0)
--   KEYS[5]  eng:{s:N}:subidem:<creator_id>|<user_id>|<key>  STRING  the first answer to an
--            Idempotency-Key (or any key of the slot when ARGV[5] is empty: it is then not read)
-- ARGV:
--   ARGV[1]  creator id
--   ARGV[2]  user id
--   ARGV[3]  action: subscribe | unsubscribe
--   ARGV[4]  idempotency record TTL, seconds
--   ARGV[5]  request fingerprint ("" when the request has no Idempotency-Key)
-- Returns {status, state, subscribers}:
--   status  "changed" | "unchanged" | "replayed" (the stored first answer) | "conflict" (the key
--           was used for a different request; state and count are then the stored ones)
--   state   1 or 0

local live_key, delta_key, subs_key, subdelta_key, idem_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local creator_id, user_id, action = ARGV[1], ARGV[2], ARGV[3]
local idem_ttl_seconds, fingerprint = tonumber(ARGV[4]), ARGV[5]

if fingerprint ~= '' then
  local stored = redis.call('GET', idem_key)
  if stored then
    local first, state, subscribers = string.match(stored, '^(.-)\n(%d+) (-?%d+)$')
    local status = (first == fingerprint) and 'replayed' or 'conflict'
    return {status, tonumber(state), tonumber(subscribers)}
  end
end

local field = creator_id .. '|' .. user_id
local count_field = 'subscribers:' .. creator_id
local current = tonumber(redis.call('HGET', subs_key, field) or '0')
local target = (action == 'subscribe') and 1 or 0

local status = 'unchanged'
if target ~= current then
  status = 'changed'
  local amount = target - current
  redis.call('HINCRBY', live_key, count_field, amount)
  redis.call('HINCRBY', delta_key, count_field, amount)
  if target == 1 then
    redis.call('HSET', subs_key, field, 1)
  else
    redis.call('HDEL', subs_key, field)
  end
  redis.call('HSET', subdelta_key, field, target)
end

local subscribers = tonumber(redis.call('HGET', live_key, count_field) or '0')
if fingerprint ~= '' then
  redis.call('SET', idem_key, string.format('%s\n%d %d', fingerprint, target, subscribers), 'EX', idem_ttl_seconds)
end
return {status, target, subscribers}
