#!lua
-- begin_consumed: reserve the offset ranges of one consumer batch and journal its view drains, or
-- refuse when another batch already holds or applied any of those offsets.
--
-- The Kafka consumer's idempotency store (one slot per consumer group, hash tag {c:<group>}; no TTL:
-- one field per partition and one entry per unfinished batch, never evicted):
--   KEYS[1]  eng:{c:<group>}:offsets         HASH  "<topic>:<partition>" -> last offset applied
--   KEYS[2]  eng:{c:<group>}:claims          HASH  "<topic>:<partition>" -> last offset reserved
--   KEYS[3]  eng:{c:<group>}:journal         HASH  batch id -> msgpack {ranges, calls} (the drains)
--   KEYS[4]  eng:{c:<group>}:journal_ranges  HASH  batch id -> msgpack ranges
-- ARGV:
--   ARGV[1]  batch id
--   ARGV[2]  the journal entry (msgpack); ARGV[3] its ranges alone (msgpack)
--   ARGV[4..] triples: "<topic>:<partition>", first offset, last offset of the batch in that partition
-- Returns {} when the ranges were reserved and the journal written; otherwise the list of
-- "<topic>:<partition>" fields whose first offset is not above the offsets applied or reserved
-- (nothing is written then: the caller recovers the other batch's journal and plans again).

local offsets_key, claims_key, journal_key, ranges_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local batch_id = ARGV[1]

local conflicts = {}
for i = 4, #ARGV, 3 do
  local field, first = ARGV[i], tonumber(ARGV[i + 1])
  local applied = tonumber(redis.call('HGET', offsets_key, field) or '-1')
  local claimed = tonumber(redis.call('HGET', claims_key, field) or '-1')
  if first <= applied or first <= claimed then
    conflicts[#conflicts + 1] = field
  end
end
if #conflicts > 0 then
  return conflicts
end

for i = 4, #ARGV, 3 do
  redis.call('HSET', claims_key, ARGV[i], ARGV[i + 2])
end
redis.call('HSET', journal_key, batch_id, ARGV[2])
redis.call('HSET', ranges_key, batch_id, ARGV[3])
return {}
