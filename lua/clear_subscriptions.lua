#!lua
-- clear_subscriptions: take back the subscriptions of one user to some creators of one shard (the GDPR
-- purge, daemon/purge.py), as an unsubscribe would, in one atomic call.
--
-- For each creator: the user's subscription (what set_subscription.lua reads) becomes 0, the creator's
-- subscriber count is taken back from its counts and the delta hash, and a pending state 0 is
-- recorded, so that the flusher deletes the `creator_subscriptions` row and writes the count. A
-- subscription still pending is covered: the state key holds it and the 0 recorded is newer. Calling
-- it again changes nothing. Subscriptions and counts are cold keys (lib/cold.lua).
--
-- Key layout (hash tag {s:N} of the creators: N = shard of the creator id):
--   KEYS[1]  eng:{s:N}:delta     HASH    "subscribers:<creator_id>" -> increment not yet in Postgres
--   KEYS[2]  eng:{s:N}:subdelta  HASH    "<creator_id>|<user_id>" -> state not yet in Postgres
--   KEYS[3]  eng:{s:N}:dirty     SET     cold keys changed since the last capture
--   KEYS[4]  eng:{s:N}:rec     HASH    "l:<key>" -> the load token of a missing cold key (lib/cold.lua)
--   KEYS[5]  eng:{s:N}:recexp  ZSET    record -> expiry (ms)
--   derived, same hash tag: eng:{s:N}:cr:<creator_id> (HASH, counts),
--                           eng:{s:N}:sb:<creator_id>|<user_id> (STRING, the subscription)
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter: keys new to Postgres (lib/cold.lua)
-- ARGV:
--   ARGV[1]  user id
--   ARGV[2]  the key prefix of the slot, "eng:{s:N}"
--   then     the creator ids
--   last     seeds of missing cold keys, or "" (lib/cold.lua)
-- Returns the number of subscriptions removed, or {"unknown", key, token, ...} (nothing changed).

-- @include records
-- @include cold

local delta_key, subdelta_key, dirty_key, rec_key, recexp_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local user_id, prefix = ARGV[1], ARGV[2]

local names = {}
for i = 3, #ARGV - 1 do
  names[#names + 1] = prefix .. ':cr:' .. ARGV[i]
  names[#names + 1] = prefix .. ':sb:' .. ARGV[i] .. '|' .. user_id
end
local unknown = cold.load(ARGV[#ARGV], rec_key, recexp_key, names)
if unknown then
  return unknown
end

local removed = 0
for i = 3, #ARGV - 1 do
  local creator_id = ARGV[i]
  local state_key = prefix .. ':sb:' .. creator_id .. '|' .. user_id
  if redis.call('GET', state_key) == '1' then
    redis.call('HINCRBY', prefix .. ':cr:' .. creator_id, 'subscribers', -1)
    redis.call('HINCRBY', delta_key, 'subscribers:' .. creator_id, -1)
    removed = removed + 1
  end
  redis.call('SET', state_key, 0)
  redis.call('HSET', subdelta_key, creator_id .. '|' .. user_id, 0)
end
cold.pin(names, dirty_key)
return removed
