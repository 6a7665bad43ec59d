#!lua flags=allow-oom
-- trim_history: after a flush committed, drop the user's entries Postgres now has, unless a newer
-- heartbeat replaced them meanwhile.
--
-- Key layout (hash tag {s:N}, N = shard of the *user* id, one slot):
--   KEYS[1]  eng:{s:N}:hist:<user_id>  HASH  content_id -> "<ts_us>|<pct>|<pos>"
-- ARGV:
--   ARGV[2i-1], ARGV[2i]  content_id, the value the flusher wrote for it
-- Returns the number of entries removed. Called after the Postgres commit and before finish_batch
-- (also for a batch found already in the ledger), so a crash in between only repeats it.

local hist_key = KEYS[1]
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', hist_key, ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', hist_key, ARGV[i])
    removed = removed + 1
  end
end
return removed
