#!lua flags=allow-oom
-- read_counts: what the stats endpoints read from Redis about some items of one shard, in one call.
--
-- Reads (PFCOUNT may update an HLL's cached count) and leaves load placeholders: it runs at maxmemory
-- too (allow-oom). A missing counts hash or like state is reported as such, with a load token: the
-- caller reads Postgres instead and seeds the key with seed_cold.lua (lib/cold.lua). One the row filter
-- proves new (Postgres has no row) is answered as the empty value instead, and not created.
--
-- Key layout (hash tag {s:N} of the first item; on Redis Cluster every item of a call is in that slot):
--   KEYS[1]  eng:{s:N}:rec     HASH  records: "l:<key>" -> load tokens
--   KEYS[2]  eng:{s:N}:recexp  ZSET  record -> expiry (ms)
--   derived, per item, with the item's own tag "eng:{s:M}" (M = N on a cluster):
--            eng:{s:M}:c:<content_id>               HASH   the item's live counts and flags
--            eng:{s:M}:uv:<content_id>              HLL    all-time unique viewers
--            eng:{s:M}:uvd:<yyyymmdd>:<content_id>  HLL    today's unique viewers
--            eng:{s:M}:lk:<content_id>|<user_id>    STRING the viewer's like state (with a user)
--            eng:{s:M}:rec, eng:{s:M}:recexp, eng:{s:M}:rows  its shard's records and row filter
-- ARGV:
--   ARGV[1]  today, yyyymmdd
--   ARGV[2]  the viewer's user id, or "" (no like state read)
--   then     pairs: the item's key prefix "eng:{s:M}", the content id
-- Returns, per item in order, 6 values: counts, all_time, today, state, counts_token, state_token:
-- counts the flat HGETALL of the counts hash ({} when it is missing); all_time and today a PFCOUNT, or
-- -1 when the HLL is missing; state the like state, or "" when it is missing or was not asked for; the
-- tokens "" unless the key is missing.

-- @include records
-- @include cold

local day, user = ARGV[1], ARGV[2]

local function count(key)
  if redis.call('EXISTS', key) == 0 then
    return -1
  end
  return redis.call('PFCOUNT', key)
end

local out = {}
for i = 3, #ARGV, 2 do
  local prefix, content_id = ARGV[i], ARGV[i + 1]
  local rec_key, recexp_key = prefix .. ':rec', prefix .. ':recexp'
  local rows_key = cold.rows_key(rec_key)
  local function token(key)
    return cold.unknown(rec_key, recexp_key, {key})[3]
  end
  local counts_key = prefix .. ':c:' .. content_id
  local counts = redis.call('HGETALL', counts_key)
  local state, counts_token, state_token = '', '', ''
  if #counts == 0 then
    if cold.is_new(rows_key, counts_key) then
      counts = cold.empty(counts_key)
    else
      counts_token = token(counts_key)
    end
  end
  if user ~= '' then
    local state_key = prefix .. ':lk:' .. content_id .. '|' .. user
    state = redis.call('GET', state_key) or ''
    if state == '' then
      if cold.is_new(rows_key, state_key) then
        state = cold.empty(state_key)
      else
        state_token = token(state_key)
      end
    end
  end
  out[#out + 1] = counts
  out[#out + 1] = count(prefix .. ':uv:' .. content_id)
  out[#out + 1] = count(prefix .. ':uvd:' .. day .. ':' .. content_id)
  out[#out + 1] = state
  out[#out + 1] = counts_token
  out[#out + 1] = state_token
end
return out
