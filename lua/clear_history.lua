#!lua flags=allow-oom
-- clear_history: forget a user's unflushed watch history and return the clear's timestamp.
--
-- Key layout (hash tag {s:N}, N = shard of the *user* id, one slot):
--   KEYS[1]  eng:{s:N}:hist:<user_id>  HASH  content_id -> "<ts_us>|<pct>|<pos>" (deleted)
--   KEYS[2]  eng:{s:N}:hdelta          HASH  "<content_id>|<user_id>" -> ...: the user's fields removed
--   KEYS[3]  eng:{s:N}:hbatch          HASH  the same in a captured batch: the user's fields removed
-- ARGV:
--   ARGV[1]  user_id
-- Returns {cleared_us, entries}: the clear's time in microseconds since the epoch (Redis' clock, and
-- never before the stamp of an entry it removed) and the number of entries removed. The caller records
-- cleared_us in Postgres (watch_history_clears); the flusher writes no heartbeat stamped at or before it,
-- which covers a batch a flusher read before this call and writes after it.

local hist_key, hdelta_key, hbatch_key = KEYS[1], KEYS[2], KEYS[3]
local user_id = ARGV[1]

local time = redis.call('TIME')
local cleared_us = tonumber(time[1]) * 1000000 + tonumber(time[2])

local entries = redis.call('HGETALL', hist_key)
for i = 1, #entries, 2 do
  local stamped = tonumber(string.match(entries[i + 1], '^(%d+)|'))
  if stamped and stamped > cleared_us then
    cleared_us = stamped
  end
  local field = entries[i] .. '|' .. user_id
  redis.call('HDEL', hdelta_key, field)
  redis.call('HDEL', hbatch_key, field)
end
redis.call('DEL', hist_key)
return {string.format('%.0f', cleared_us), #entries / 2}
