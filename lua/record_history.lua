#!lua
-- record_history: one watch-history heartbeat of a user on an item; the last one wins.
--
-- Key layout (hash tag {s:N}, N = shard of the *user* id, one slot):
--   KEYS[1]  eng:{s:N}:hist:<user_id>  HASH  content_id -> "<ts_us>|<pct>|<pos>": the user's positions
--                                            not yet known to be in Postgres (read by GET history)
--   KEYS[2]  eng:{s:N}:hdelta          HASH  "<content_id>|<user_id>" -> "<ts_us>|<pct>|<pos>": what
--                                            the flusher captures (RENAME to hbatch) and upserts
-- ARGV:
--   ARGV[1]  content_id
--   ARGV[2]  user_id
--   ARGV[3]  "<progress_pct>|<position_seconds>" (validated by the caller)
-- ts_us, the entry's last_watched_at, is the Redis server's clock (TIME) in microseconds since the
-- epoch, so every api process stamps by one clock. It never goes back for an entry: a heartbeat stamped
-- at or before the entry's current stamp (the clock stepped back) gets that stamp + 1 us, so that the
-- flusher's "newer last_watched_at wins" upsert keeps the last heartbeat.
-- Returns the stored value "<ts_us>|<pct>|<pos>".

local hist_key, hdelta_key = KEYS[1], KEYS[2]
local content_id, user_id, progress = ARGV[1], ARGV[2], ARGV[3]

local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])

local previous = redis.call('HGET', hist_key, content_id)
if previous then
  local previous_us = tonumber(string.match(previous, '^(%d+)|'))
  if previous_us and previous_us >= now_us then
    now_us = previous_us + 1
  end
end

local value = string.format('%.0f', now_us) .. '|' .. progress
redis.call('HSET', hist_key, content_id, value)
redis.call('HSET', hdelta_key, content_id .. '|' .. user_id, value)
return value
