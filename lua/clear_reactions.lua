#!lua
-- clear_reactions: take back the likes and dislikes of one user on some content items of one shard
-- (the GDPR purge, daemon/purge.py), as an unlike/undislike would, in one atomic call.
--
-- For each item: the user's state (what set_reaction.lua reads) becomes 0, its count is taken back
-- from the item's counts and the delta hash, and a pending state 0 is recorded, so that the flusher
-- deletes the `likes` row and writes the counts. A state still pending (sdelta, or a captured sbatch)
-- is covered too: the state key already holds it, and the 0 recorded in sdelta is newer. Calling it
-- again changes nothing (the state is then 0). States and counts are cold keys (lib/cold.lua).
--
-- Key layout (hash tag {s:N} of the content items):
--   KEYS[1]  eng:{s:N}:delta   HASH    "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[2]  eng:{s:N}:sdelta  HASH    "<content_id>|<user_id>" -> state not yet in Postgres
--   KEYS[3]  eng:{s:N}:dirty   SET     cold keys changed since the last capture
--   KEYS[4]  eng:{s:N}:rec     HASH    "l:<key>" -> the load token of a missing cold key (lib/cold.lua)
--   KEYS[5]  eng:{s:N}:recexp  ZSET    record -> expiry (ms)
--   derived, same hash tag: eng:{s:N}:c:<content_id> (HASH, counts),
--                           eng:{s:N}:lk:<content_id>|<user_id> (STRING, the user's state)
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter: keys new to Postgres (lib/cold.lua)
-- ARGV:
--   ARGV[1]  user id
--   ARGV[2]  the key prefix of the slot, "eng:{s:N}"
--   then     the content ids
--   last     seeds of missing cold keys, or "" (lib/cold.lua)
-- Returns {likes removed, dislikes removed}, or {"unknown", key, token, ...} (nothing changed).

-- @include records
-- @include cold

local delta_key, sdelta_key, dirty_key, rec_key, recexp_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local user_id, prefix = ARGV[1], ARGV[2]

local names = {}
for i = 3, #ARGV - 1 do
  names[#names + 1] = prefix .. ':c:' .. ARGV[i]
  names[#names + 1] = prefix .. ':lk:' .. ARGV[i] .. '|' .. user_id
end
local unknown = cold.load(ARGV[#ARGV], rec_key, recexp_key, names)
if unknown then
  return unknown
end

local likes, dislikes = 0, 0
for i = 3, #ARGV - 1 do
  local content_id = ARGV[i]
  local counts_key, state_key = prefix .. ':c:' .. content_id, prefix .. ':lk:' .. content_id .. '|' .. user_id
  local current = tonumber(redis.call('GET', state_key))
  local counter = (current == 1 and 'likes') or (current == -1 and 'dislikes') or nil
  if counter then
    redis.call('HINCRBY', counts_key, counter, -1)
    redis.call('HINCRBY', delta_key, counter .. ':' .. content_id, -1)
    if current == 1 then likes = likes + 1 else dislikes = dislikes + 1 end
  end
  redis.call('SET', state_key, 0)
  redis.call('HSET', sdelta_key, content_id .. '|' .. user_id, 0)
end
cold.pin(names, dirty_key)
return {likes, dislikes}
