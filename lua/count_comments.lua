#!lua
-- count_comments: apply the comment count changes of some comment rows of one shard, each at most once.
--
-- A comment row is counted (+1) once it exists and uncounted (-1) once it is deleted; the row's
-- `counted` flag in Postgres says which change is already in Redis (daemon/comment_counts.py). Each
-- change carries a marker record, so a change applied by a call whose Postgres commit then failed is
-- not applied again when the row is settled a second time. The items' counts are cold keys.
--
-- Key layout (hash tag {s:N} of the content items, one slot):
--   KEYS[1]  eng:{s:N}:delta   HASH   "comments:<content_id>" -> increment not yet in Postgres
--   KEYS[2]  eng:{s:N}:rec     HASH   records: "m:<comment_id>:<0|1>" -> 1, the change was applied;
--                                    "l:<key>" -> the load token of a missing cold key (lib/cold.lua)
--   KEYS[3]  eng:{s:N}:recexp  ZSET   record -> expiry (ms)
--   KEYS[4]  eng:{s:N}:dirty   SET    cold keys changed since the last capture
--   derived, same hash tag: eng:{s:N}:c:<content_id>  HASH  each item's live counts (comments, ...)
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter: keys new to Postgres (lib/cold.lua)
-- ARGV:
--   ARGV[1]  mode: apply | forget (forget: delete the markers, once Postgres has the flags)
--   ARGV[2]  marker lifetime, seconds
--   ARGV[3]  the key prefix of the slot, "eng:{s:N}"
--   then     for each change: content id, amount (1 or -1), marker name
--   last     seeds of missing cold keys, or "" (lib/cold.lua)
-- Returns the number of changes applied (apply: those without a marker), or of markers deleted
-- (forget); or {"unknown", key, token, ...} when an item's counts are missing (apply: nothing
-- applied; lib/cold.lua).

-- @include records
-- @include cold

local delta_key, rec_key, recexp_key, dirty_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, ttl_seconds, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local FIRST, LAST = 4, #ARGV - 1

if mode == 'forget' then
  local deleted = 0
  for i = FIRST, LAST, 3 do
    deleted = deleted + redis.call('HDEL', rec_key, ARGV[i + 2])
    redis.call('ZREM', recexp_key, ARGV[i + 2])
  end
  return deleted
end

local names, seen = {}, {}
for i = FIRST, LAST, 3 do
  local name = prefix .. ':c:' .. ARGV[i]
  if not seen[name] then
    seen[name] = true
    names[#names + 1] = name
  end
end
local unknown = cold.load(ARGV[#ARGV], rec_key, recexp_key, names)
if unknown then
  return unknown
end

local applied, changed = 0, {}
for i = FIRST, LAST, 3 do
  local content_id, amount, marker = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if not records.get(rec_key, recexp_key, marker) then
    records.put(rec_key, recexp_key, marker, '1', ttl_seconds)
    local counts_key = prefix .. ':c:' .. content_id
    redis.call('HINCRBY', counts_key, 'comments', amount)
    redis.call('HINCRBY', delta_key, 'comments:' .. content_id, amount)
    changed[#changed + 1] = counts_key
    applied = applied + 1
  end
end
cold.pin(changed, dirty_key)
return applied
