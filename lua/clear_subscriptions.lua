-- clear_subscriptions: take back the subscriptions of one user to some creators of one shard (the GDPR
-- purge, daemon/purge.py), as an unsubscribe would, in one atomic call.
--
-- For each creator: the user's live subscription (what set_subscription.lua reads) is removed and the
-- creator's subscriber count taken back from the live and delta hashes, and a pending state 0 is
-- recorded, so that the flusher deletes the `creator_subscriptions` row and writes the count. A
-- subscription still pending (subdelta, or a captured subbatch) is covered: the live state includes it
-- and the 0 recorded is newer. Calling it again changes nothing.
--
-- Key layout (hash tag {s:N} of the creators: N = shard of the creator id):
--   KEYS[1]  eng:{s:N}:live      HASH  "subscribers:<creator_id>" -> live subscriber count
--   KEYS[2]  eng:{s:N}:delta     HASH  "subscribers:<creator_id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:subs      HASH  "<creator_id>|<user_id>" -> 1 (subscribed)
--   KEYS[4]  eng:{s:N}:subdelta  HASH  "<creator_id>|<user_id>" -> state not yet in Postgres
-- ARGV:
--   ARGV[1]  user id
--   then     the creator ids
-- Returns the number of subscriptions removed.

local live_key, delta_key, subs_key, subdelta_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user_id = ARGV[1]

local removed = 0
for i = 2, #ARGV do
  local creator_id = ARGV[i]
  local field = creator_id .. '|' .. user_id
  if redis.call('HGET', subs_key, field) then
    local count_field = 'subscribers:' .. creator_id
    redis.call('HINCRBY', live_key, count_field, -1)
    redis.call('HINCRBY', delta_key, count_field, -1)
    removed = removed + 1
  end
  redis.call('HDEL', subs_key, field)
  redis.call('HSET', subdelta_key, field, 0)
end
return removed
