-- set_reaction: like, unlike, dislike or undislike one content item for one user, in one round trip.
--
-- Checks the idempotency record, reads the user's state, enforces like/dislike mutual exclusion,
-- moves the live counts, records the count deltas and the new state for the flusher, and returns
-- the new state and counts -- atomically, in one slot.
--
-- Key layout (hash tag {s:N} of the content item):
--   KEYS[1]  eng:{s:N}:live    HASH    "<counter>:<content_id>" -> live count (likes, dislikes, ...)
--   KEYS[2]  eng:{s:N}:delta   HASH    "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:state   HASH    "<content_id>|<user_id>" -> 1 (liked) or -1 (disliked); absent: none
--   KEYS[4]  eng:{s:N}:sdelta  HASH    "<content_id>|<user_id>" -> state not yet in Postgres (1, -1, 0)
--   KEYS[5]  eng:{s:N}:idem:<content_id>|<user_id>|<key>  STRING  the first answer to an
--            Idempotency-Key (or any key of the slot when ARGV[5] is empty: it is then not read)
-- ARGV:
--   ARGV[1]  content id
--   ARGV[2]  user id
--   ARGV[3]  action: like | unlike | dislike | undislike
--   ARGV[4]  idempotency record TTL, seconds
--   ARGV[5]  request fingerprint ("" when the request has no Idempotency-Key)
-- Returns {status, state, likes, dislikes}:
--   status  "changed" | "unchanged" | "replayed" (the stored first answer) | "conflict" (the key
--           was used for a different request; state and counts are then the stored ones)
--   state   1, -1 or 0

local live_key, delta_key, state_key, sdelta_key, idem_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local content_id, user_id, action = ARGV[1], ARGV[2], ARGV[3]
local idem_ttl_seconds, fingerprint = tonumber(ARGV[4]), ARGV[5]

if fingerprint ~= '' then
  local stored = redis.call('GET', idem_key)
  if stored then
    local first, state, likes, dislikes = string.match(stored, '^(.-)\n(-?%d+) (%d+) (%d+)$')
    local status = (first == fingerprint) and 'replayed' or 'conflict'
    return {status, tonumber(state), tonumber(likes), tonumber(dislikes)}
  end
end

local field = content_id .. '|' .. user_id
local likes_field, dislikes_field = 'likes:' .. content_id, 'dislikes:' .. content_id
local current = tonumber(redis.call('HGET', state_key, field) or '0')

local target = current
if action == 'like' then
  target = 1
elseif action == 'dislike' then
  target = -1
elseif action == 'unlike' and current == 1 then
  target = 0
elseif action == 'undislike' and current == -1 then
  target = 0
end

local function move(counter_field, amount)
  redis.call('HINCRBY', live_key, counter_field, amount)
  redis.call('HINCRBY', delta_key, counter_field, amount)
end

local status = 'unchanged'
if target ~= current then
  status = 'changed'
  if current == 1 then move(likes_field, -1) elseif current == -1 then move(dislikes_field, -1) end
  if target == 1 then move(likes_field, 1) elseif target == -1 then move(dislikes_field, 1) end
  if target == 0 then
    redis.call('HDEL', state_key, field)
  else
    redis.call('HSET', state_key, field, target)
  end
  redis.call('HSET', sdelta_key, field, target)
end

local likes = tonumber(redis.call('HGET', live_key, likes_field) or '0')
local dislikes = tonumber(redis.call('HGET', live_key, dislikes_field) or '0')
if fingerprint ~= '' then
  local answer = string.format('%s\n%d %d %d', fingerprint, target, likes, dislikes)
  redis.call('SET', idem_key, answer, 'EX', idem_ttl_seconds)
end
return {status, target, likes, dislikes}
