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
  local current = redis.call('HGET', counts_key, name)
  if current and current >= value then
    return
  end
  if current or redis.call('EXISTS', counts_key) == 1 then
    redis.call('HSET', counts_key, name, value)
  else
    cold.forget_loads(KEYS[5], KEYS[6], {counts_key})
  end
end

-- members: the written ones of a captured set; touched: the set of those changed since; `each` is
-- called with every member, then the ones not changed since get `ttl`.
local function finish(members, captured_key, touched_key, kind, ttl, each)
  for i = 1, #members, 1000 do
    redis.call('SREM', captured_key, unpack(members, i, math.min(i + 999, #members)))
  end
  for _, member in ipairs(cold.not_in(touched_key, members)) do
    expired = expired + redis.call('EXPIRE', prefix .. kind .. member, ttl)
  end
  for _, member in ipairs(members) do
    each(member)
  end
end

local daily, all_time = {}, {}
for i = 5, 4 + n do
  daily[#daily + 1] = ARGV[i]
end
for i = 5 + n, #ARGV do
  all_time[#all_time + 1] = ARGV[i]
end
finish(daily, KEYS[1], KEYS[2], ':uvd:', day_ttl, function(member)
  flag(string.sub(member, 10), 'uvd', string.sub(member, 1, 8))
end)
finish(all_time, KEYS[3], KEYS[4], ':uv:', all_ttl, function(content_id)
  flag(content_id, 'uva', '1')
end)
return expired
