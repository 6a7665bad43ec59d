#!lua flags=allow-oom
-- finish_uniques: after the Postgres commit of captured unique viewers, forget the members, give their
-- HLLs the idle TTL back (unless changed again since the capture), and record on each item's counts
-- that Postgres now holds those HLLs.
--
-- The counts' flags (uva: Postgres has the all-time HLL; uvd: the last day it has a daily HLL of)
-- tell apply_views.lua whether a missing HLL must be loaded from Postgres or may start empty. An item
-- whose counts are not in Redis gets its flags when they are loaded; a load of them already under way
-- read Postgres before this commit, so its placeholder is dropped and its seed refused (lib/cold.lua).
-- Runs at maxmemory too (allow-oom).
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:uvbatch   SET     the captured daily members
--   KEYS[2]  eng:{s:N}:uvtouch   SET     daily members changed since the capture
--   KEYS[3]  eng:{s:N}:uvabatch  SET     the captured all-time members
--   KEYS[4]  eng:{s:N}:uvatouch  SET     all-time members changed since the capture
--   KEYS[5]  eng:{s:N}:rec       HASH    records: "l:<key>" -> load tokens (lib/cold.lua)
--   KEYS[6]  eng:{s:N}:recexp    ZSET    record -> expiry (ms)
--   derived, same hash tag: the HLLs and eng:{s:N}:c:<content_id> (HASH, the item's counts)
-- ARGV:
--   ARGV[1]  the key prefix of the slot, "eng:{s:N}"
--   ARGV[2]  idle TTL of all-time HLLs, seconds;  ARGV[3]  lifetime of daily HLLs, seconds
--   ARGV[4]  number of daily members n, then the n members "<yyyymmdd>:<content_id>", then the
--            all-time members (content ids) written
-- Returns the number of HLLs given a TTL.

-- @include records
-- @include cold

local prefix, all_ttl, day_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local expired = 0

local function flag(content_id, name, value)
  local counts_key = prefix .. ':c:' .. content_id
  if redis.call('EXISTS', counts_key) == 1 then
    local current = redis.call('HGET', counts_key, name)
    if not current or current < value then
      redis.call('HSET', counts_key, name, value)
    end
  else
    cold.forget_loads(KEYS[5], KEYS[6], {counts_key})
  end
end

for i = 5, 4 + n do
  local member = ARGV[i]
  redis.call('SREM', KEYS[1], member)
  if redis.call('SISMEMBER', KEYS[2], member) == 0 then
    expired = expired + redis.call('EXPIRE', prefix .. ':uvd:' .. member, day_ttl)
  end
  flag(string.sub(member, 10), 'uvd', string.sub(member, 1, 8))
end
for i = 5 + n, #ARGV do
  local content_id = ARGV[i]
  redis.call('SREM', KEYS[3], content_id)
  if redis.call('SISMEMBER', KEYS[4], content_id) == 0 then
    expired = expired + redis.call('EXPIRE', prefix .. ':uv:' .. content_id, all_ttl)
  end
  flag(content_id, 'uva', '1')
end
return expired
