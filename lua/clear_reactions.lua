-- clear_reactions: take back the likes and dislikes of one user on some content items of one shard
-- (the GDPR purge, daemon/purge.py), as an unlike/undislike would, in one atomic call.
--
-- For each item: the user's live state (what set_reaction.lua reads) is removed and its count taken
-- back from the live and delta hashes, and a pending state 0 is recorded, so that the flusher deletes
-- the `likes` row and writes the counts. A state still pending (sdelta, or a captured sbatch) is
-- covered too: the live state already includes it, and the 0 recorded in sdelta is newer. Calling it
-- again changes nothing (the state is then none).
--
-- Key layout (hash tag {s:N} of the content items):
--   KEYS[1]  eng:{s:N}:live    HASH  "<counter>:<content_id>" -> live count (likes, dislikes)
--   KEYS[2]  eng:{s:N}:delta   HASH  "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:state   HASH  "<content_id>|<user_id>" -> 1 (liked) or -1 (disliked)
--   KEYS[4]  eng:{s:N}:sdelta  HASH  "<content_id>|<user_id>" -> state not yet in Postgres
-- ARGV:
--   ARGV[1]  user id
--   then     the content ids
-- Returns {likes removed, dislikes removed}.

local live_key, delta_key, state_key, sdelta_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user_id = ARGV[1]

local function move(counter_field, amount)
  redis.call('HINCRBY', live_key, counter_field, amount)
  redis.call('HINCRBY', delta_key, counter_field, amount)
end

local likes, dislikes = 0, 0
for i = 2, #ARGV do
  local content_id = ARGV[i]
  local field = content_id .. '|' .. user_id
  local current = tonumber(redis.call('HGET', state_key, field) or '0')
  if current == 1 then
    move('likes:' .. content_id, -1)
    likes = likes + 1
  elseif current == -1 then
    move('dislikes:' .. content_id, -1)
    dislikes = dislikes + 1
  end
  redis.call('HDEL', state_key, field)
  redis.call('HSET', sdelta_key, field, 0)
end
return {likes, dislikes}
