#!lua flags=allow-oom
-- finish_consumed: record that a consumer batch is applied: raise each partition's applied offset to
-- the batch's last one (never lower it) and drop the batch's journal entry.
--
-- Runs at maxmemory too (allow-oom): it frees the batch's journal entry.
--
-- Key layout: as begin_consumed.lua (one slot per consumer group, hash tag {c:<group>}):
--   KEYS[1]  eng:{c:<group>}:offsets         HASH  "<topic>:<partition>" -> last offset applied
--   KEYS[2]  eng:{c:<group>}:journal         HASH  batch id -> journal entry; "r:<batch id>": a
--                                                  recovery took it (take_journal.lua)
--   KEYS[3]  eng:{c:<group>}:journal_ranges  HASH  batch id -> its ranges
-- ARGV:
--   ARGV[1]  batch id ("" when the batch wrote no journal)
--   ARGV[2..] pairs: "<topic>:<partition>", last offset of the batch in that partition
-- Returns {moved, recovered}: the number of partitions whose applied offset moved, and 1 when a
-- recovery had taken the batch's journal (its consumer must then keep the drain marks), else 0.

local offsets_key, journal_key, ranges_key = KEYS[1], KEYS[2], KEYS[3]
local batch_id = ARGV[1]

local moved = 0
for i = 2, #ARGV, 2 do
  local field, last = ARGV[i], tonumber(ARGV[i + 1])
  local applied = tonumber(redis.call('HGET', offsets_key, field) or '-1')
  if last > applied then
    redis.call('HSET', offsets_key, field, ARGV[i + 1])
    moved = moved + 1
  end
end
local recovered = 0
if batch_id ~= '' then
  redis.call('HDEL', journal_key, batch_id)
  redis.call('HDEL', ranges_key, batch_id)
  recovered = redis.call('HDEL', journal_key, 'r:' .. batch_id)
end
return {moved, recovered}
