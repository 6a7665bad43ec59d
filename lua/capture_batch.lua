-- capture_batch: take a shard's pending deltas as one flush batch, under a lease.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:delta     HASH   "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[2]  eng:{s:N}:batch     HASH   the captured batch (same fields), until Postgres has it
--   KEYS[3]  eng:{s:N}:batch_id  STRING id of the captured batch (the flush_batches ledger key)
--   KEYS[4]  eng:{s:N}:lease     STRING owner of the shard's flush lease
-- ARGV:
--   ARGV[1]  lease owner token
--   ARGV[2]  lease duration, milliseconds
--   ARGV[3]  batch id to use if a new batch is captured
-- Returns:
--   false                      the shard is leased by another owner
--   {}                         nothing to flush (no lease taken)
--   {batch_id, {f1, v1, ...}}  the batch to write; a stranded batch (an earlier capture whose
--                              delete never happened) is returned again rather than overwritten.

local delta_key, batch_key, batch_id_key, lease_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owner, lease_ms, new_batch_id = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local holder = redis.call('GET', lease_key)
if holder and holder ~= owner then
  return false
end

local has_batch = redis.call('EXISTS', batch_key) == 1
if not has_batch and redis.call('EXISTS', delta_key) == 0 then
  if holder then
    redis.call('DEL', lease_key)
  end
  return {}
end

redis.call('SET', lease_key, owner, 'PX', lease_ms)
if not has_batch then
  redis.call('RENAME', delta_key, batch_key)
  redis.call('SET', batch_id_key, new_batch_id)
end
local batch_id = redis.call('GET', batch_id_key)
if not batch_id then
  -- A batch without an id cannot come from this script; give it one so it is still written once.
  batch_id = new_batch_id
  redis.call('SET', batch_id_key, batch_id)
end
return {batch_id, redis.call('HGETALL', batch_key)}
