#!lua flags=allow-oom
-- read_cold: read some cold keys of one shard (lib/cold.lua), leaving a load placeholder for each one
-- Redis does not hold, so that the reader can seed it from Postgres (seed_cold.lua).
--
-- Reads and leaves placeholders only: it runs at maxmemory too (allow-oom).
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:rec     HASH  records: "l:<key>" -> load tokens
--   KEYS[2]  eng:{s:N}:recexp  ZSET  record -> expiry (ms)
--   KEYS[3..] the cold keys to read
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter (lib/cold.lua), read only
-- ARGV:
--   ARGV[i]  "h" when KEYS[i + 2] is a hash (its HGETALL is returned), "s" when it is a string
-- Returns {found_1, value_1, found_2, value_2, ...}: found 1 and the value (a flat field list, or the
-- string) when the key is present or the row filter proves it new (its empty value, not created); 0
-- and its load token when it is missing.

-- @include records
-- @include cold

local rows_key = cold.rows_key(KEYS[1])
local out = {}
for i = 3, #KEYS do
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 1 then
    out[#out + 1] = 1
    out[#out + 1] = (ARGV[i - 2] == 'h') and redis.call('HGETALL', key) or redis.call('GET', key)
  elseif cold.is_new(rows_key, key) then
    out[#out + 1] = 1
    out[#out + 1] = cold.empty(key)
  else
    out[#out + 1] = 0
    out[#out + 1] = cold.unknown(KEYS[1], KEYS[2], {key})[3]
  end
end
return out
