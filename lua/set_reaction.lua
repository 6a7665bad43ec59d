#!lua
-- set_reaction: like, unlike, dislike or undislike one content item for one user, in one round trip.
--
-- Checks the idempotency record, reads the user's state, enforces like/dislike mutual exclusion,
-- moves the live counts, records the count deltas and the new state for the flusher, and returns
-- the new state and counts -- atomically, in one slot. The state and the counts are cold keys
-- (lib/cold.lua): when either is missing the call answers "unknown" and changes nothing, unless the row
-- filter proves Postgres has no row for it: the counts are then created empty, and the state is 0 and
-- created only if the call changes it (an unlike of a pair never liked writes nothing).
--
-- Key layout (hash tag {s:N} of the content item):
--   KEYS[1]  eng:{s:N}:c:<content_id>            HASH    the item's live counts (likes, dislikes, ...)
--   KEYS[2]  eng:{s:N}:lk:<content_id>|<user_id> STRING  the user's state: 1 liked, -1 disliked, 0 none
--   KEYS[3]  eng:{s:N}:delta    HASH  "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[4]  eng:{s:N}:sdelta   HASH  "<content_id>|<user_id>" -> state not yet in Postgres (1, -1, 0)
--   KEYS[5]  eng:{s:N}:rec      HASH  records: ARGV[6] -> "<fingerprint>\n<state> <likes> <dislikes>";
--                                    "l:<key>" -> the load token of a missing cold key (lib/cold.lua)
--   KEYS[6]  eng:{s:N}:recexp   ZSET  record -> expiry (ms)
--   KEYS[7]  eng:{s:N}:dirty    SET   cold keys changed since the last capture
--   KEYS[8]  eng:{u:<user_id>}:rl:<action>  ZSET  the user's rate-limit log (optional)
--                                    (another slot: sent on a single Redis only; see ARGV[7])
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter: keys new to Postgres (lib/cold.lua)
-- ARGV:
--   ARGV[1]  content id
--   ARGV[2]  user id
--   ARGV[3]  action: like | unlike | dislike | undislike
--   ARGV[4]  idempotency record lifetime, seconds
--   ARGV[5]  request fingerprint ("" when the request has no Idempotency-Key)
--   ARGV[6]  the record's name in KEYS[5] (read and written only with a fingerprint)
--   ARGV[7]  "<window ms> <limit> <request id>": admit the request in KEYS[8] first (lib/ratelimit.lua),
--            so that a limited like costs one round trip; "" without KEYS[8]
--   ARGV[8]  seeds of missing cold keys, or "" (lib/cold.lua)
-- Returns {status, state, likes, dislikes}:
--   status  "changed" | "unchanged" | "replayed" (the stored first answer) | "conflict" (the key
--           was used for a different request; state and counts are then the stored ones)
--   state   1, -1 or 0
-- or {"limited", retry_after_ms} when the rate limit refused the request (nothing else is done),
-- or {"unknown", key, token, ...} when KEYS[1] or KEYS[2] is missing (lib/cold.lua; the limit admitted
-- the request and, re-sent with the seeds, admits it again without taking a second place).

-- @include records
-- @include cold
-- @include ratelimit

local counts_key, state_key, delta_key, sdelta_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rec_key, recexp_key, dirty_key = KEYS[5], KEYS[6], KEYS[7]
local content_id, user_id, action = ARGV[1], ARGV[2], ARGV[3]
local record_ttl_seconds, fingerprint, record = tonumber(ARGV[4]), ARGV[5], ARGV[6]

if ARGV[7] ~= '' then
  local window_ms, limit, request_id = string.match(ARGV[7], '^(%d+) (%d+) (.+)$')
  local admitted = ratelimit.admit(KEYS[8], tonumber(window_ms), tonumber(limit), request_id)
  if admitted[1] == 0 then
    return {'limited', admitted[3]}
  end
end

if fingerprint ~= '' then
  local stored = records.get(rec_key, recexp_key, record)
  if stored then
    local first, state, likes, dislikes = string.match(stored, '^(.-)\n(-?%d+) (%d+) (%d+)$')
    local status = (first == fingerprint) and 'replayed' or 'conflict'
    return {status, tonumber(state), tonumber(likes), tonumber(dislikes)}
  end
end

-- A state the row filter proves new is 0 and is created only if this call changes it (`new`)
local unknown, deferred = cold.load(ARGV[8], rec_key, recexp_key, {counts_key, state_key},
  {[state_key] = true})
if unknown then
  return unknown
end
local new = deferred[state_key]

local current = new and 0 or tonumber(redis.call('GET', state_key))
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

local function move(counter, amount)
  redis.call('HINCRBY', counts_key, counter, amount)
  redis.call('HINCRBY', delta_key, counter .. ':' .. content_id, amount)
end

local status = 'unchanged'
if target ~= current then
  status = 'changed'
  if current == 1 then move('likes', -1) elseif current == -1 then move('dislikes', -1) end
  if target == 1 then move('likes', 1) elseif target == -1 then move('dislikes', 1) end
  cold.put(rec_key, dirty_key, state_key, target, new, {counts_key})
  redis.call('HSET', sdelta_key, content_id .. '|' .. user_id, target)
end

local counts = redis.call('HMGET', counts_key, 'likes', 'dislikes')
local likes, dislikes = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
if fingerprint ~= '' then
  local answer = string.format('%s\n%d %d %d', fingerprint, target, likes, dislikes)
  records.put(rec_key, recexp_key, record, answer, record_ttl_seconds)
end
return {status, target, likes, dislikes}
