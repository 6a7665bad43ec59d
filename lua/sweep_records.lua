#!lua flags=allow-oom
-- sweep_records: forget a shard's records whose lifetime is over (lib/records.lua), at most ARGV[1]
-- per call so that one call stays short. Runs at maxmemory too (allow-oom): it frees memory.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:rec     HASH  record name -> value
--   KEYS[2]  eng:{s:N}:recexp  ZSET  record name -> expiry (ms, Redis's clock)
-- ARGV:
--   ARGV[1]  most records to remove
-- Returns {removed, more}: more is 1 when expired records are left for another call.

-- @include records

local rec_key, recexp_key, most = KEYS[1], KEYS[2], tonumber(ARGV[1])
local now = string.format('%d', records.now_ms())
local expired = redis.call('ZRANGEBYSCORE', recexp_key, '-inf', now, 'LIMIT', 0, most)
for i = 1, #expired, 1000 do
  local names = {unpack(expired, i, math.min(i + 999, #expired))}
  redis.call('HDEL', rec_key, unpack(names))
  redis.call('ZREM', recexp_key, unpack(names))
end
local more = (#expired == most and redis.call('ZCOUNT', recexp_key, '-inf', now) > 0) and 1 or 0
return {#expired, more}
