#!lua flags=allow-oom
-- read_counts: what GET /api/v1/content/{id}/stats reads from Redis about one item, in one call.
--
-- Reads (PFCOUNT may update an HLL's cached count) and leaves load placeholders: it runs at maxmemory
-- too (allow-oom). A missing counts hash or like state is reported as such, with a load token: the
-- caller reads Postgres instead and seeds the key with seed_cold.lua (lib/cold.lua). One the row filter
-- proves new (Postgres has no row) is answered as the empty value instead, and not created.
--
-- Key layout (hash tag {s:N} of the item):
--   KEYS[1]  eng:{s:N}:c:<content_id>               HASH  the item's live counts and flags
--   KEYS[2]  eng:{s:N}:uv:<content_id>              HLL   all-time unique viewers
--   KEYS[3]  eng:{s:N}:uvd:<yyyymmdd>:<content_id>  HLL   today's unique viewers
--   KEYS[4]  eng:{s:N}:rec                          HASH  records: "l:<key>" -> load tokens
--   KEYS[5]  eng:{s:N}:recexp                       ZSET  record -> expiry (ms)
--   KEYS[6]  eng:{s:N}:lk:<content_id>|<user_id>    STRING the viewer's like state (optional)
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter (lib/cold.lua), read only
-- Returns {counts, all_time, today, state, counts_token, state_token}: counts the flat HGETALL of
-- KEYS[1] ({} when it is missing); all_time and today a PFCOUNT, or -1 when the HLL is missing; state
-- the value of KEYS[6], or "" when it is missing or was not asked for; the tokens "" unless the key is
-- missing.

-- @include records
-- @include cold

local counts = redis.call('HGETALL', KEYS[1])
local function count(key)
  if redis.call('EXISTS', key) == 0 then
    return -1
  end
  return redis.call('PFCOUNT', key)
end
local function token(key)
  return cold.unknown(KEYS[4], KEYS[5], {key})[3]
end
local state, counts_token, state_token = '', '', ''
local rows_key = cold.rows_key(KEYS[4])
if #counts == 0 then
  if cold.is_new(rows_key, KEYS[1]) then
    counts = cold.empty(KEYS[1])
  else
    counts_token = token(KEYS[1])
  end
end
if KEYS[6] then
  state = redis.call('GET', KEYS[6]) or ''
  if state == '' then
    if cold.is_new(rows_key, KEYS[6]) then
      state = cold.empty(KEYS[6])
    else
      state_token = token(KEYS[6])
    end
  end
end
return {counts, count(KEYS[2]), count(KEYS[3]), state, counts_token, state_token}
