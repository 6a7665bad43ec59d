#!lua flags=allow-oom
-- forget_pairs: after a GDPR purge deleted a user's likes and subscriptions in Postgres itself, drop the
-- user's like-state and subscription keys and pending 0s of one shard, so that Redis names the user no
-- more (daemon/purge.py).
--
-- clear_reactions.lua / clear_subscriptions.lua left each pair at 0 with a pending 0 for the flusher.
-- Once Postgres has no row for the pair, that 0 is what Postgres says: the key and the pending entry
-- may go, and a later read loads 0 from Postgres. A pair changed since (the user acted meanwhile: not
-- 0) or captured by a flusher (its batch may still write an older state, then the pending 0 must
-- follow) is left as it is. Runs at maxmemory too (allow-oom): it frees memory.
--
-- Key layout (hash tag {s:N} of the items and creators):
--   KEYS[1]  eng:{s:N}:sdelta    HASH    "<content_id>|<user_id>" -> like state not yet in Postgres
--   KEYS[2]  eng:{s:N}:sbatch    HASH    captured like states
--   KEYS[3]  eng:{s:N}:subdelta  HASH    "<creator_id>|<user_id>" -> subscription not yet in Postgres
--   KEYS[4]  eng:{s:N}:subbatch  HASH    captured subscriptions
--   KEYS[5]  eng:{s:N}:dirty     SET     cold keys changed since the last capture (a deleted key leaves it)
--   derived, same hash tag: eng:{s:N}:lk:<content_id>|<user_id>, eng:{s:N}:sb:<creator_id>|<user_id>
-- ARGV:
--   ARGV[1]  user id
--   ARGV[2]  the key prefix of the slot, "eng:{s:N}"
--   ARGV[3]  number of content ids L, then L content ids, then the creator ids
-- Returns the number of keys deleted.

local user_id, prefix = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
local deleted = 0

local function forget(kind, target, pending, captured)
  local field = target .. '|' .. user_id
  local key = prefix .. ':' .. kind .. ':' .. field
  local value = redis.call('GET', key)
  if (value == false or value == '0') and redis.call('HEXISTS', captured, field) == 0
      and (redis.call('HGET', pending, field) or '0') == '0' then
    redis.call('HDEL', pending, field)
    redis.call('SREM', KEYS[5], key)
    deleted = deleted + redis.call('DEL', key)
  end
end

for i = 4, 3 + n do
  forget('lk', ARGV[i], KEYS[1], KEYS[2])
end
for i = 4 + n, #ARGV do
  forget('sb', ARGV[i], KEYS[3], KEYS[4])
end
return deleted
