#!lua flags=allow-oom
-- finish_batch: forget a flush batch once Postgres has committed it, give the cold keys it flushed
-- their idle TTL back, and release the lease.
--
-- Called only after the Postgres commit: deleting first would lose the batch on a crash. A key of
-- the captured dirty set that is in the dirty set again was changed after the capture: it stays
-- without a TTL until the flush that has that change. Runs at maxmemory too (allow-oom): it is what
-- makes keys evictable again.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:batch      HASH    the captured deltas
--   KEYS[2]  eng:{s:N}:batch_id   STRING  id of the captured batch
--   KEYS[3]  eng:{s:N}:lease      STRING  "<owner>|<expiry ms>": the shard's flush lease
--   KEYS[4]  eng:{s:N}:sbatch     HASH    the captured like states
--   KEYS[5]  eng:{s:N}:subbatch   HASH    the captured subscriptions
--   KEYS[6]  eng:{s:N}:hbatch     HASH    the captured watch-history heartbeats
--   KEYS[7]  eng:{s:N}:vbatch     LIST    the captured view drains
--   KEYS[8]  eng:{s:N}:dirtybatch SET     the captured changed cold keys
--   KEYS[9]  eng:{s:N}:dirty      SET     cold keys changed since the capture
-- ARGV:
--   ARGV[1]  batch id that was committed (or found already in the ledger)
--   ARGV[2]  lease owner token
--   ARGV[3]  idle TTL of counts (":c:", ":cr:" keys), seconds
--   ARGV[4]  idle TTL of like states and subscriptions (":lk:", ":sb:" keys), seconds
-- Returns 1 when the batch was deleted, 0 when the shard holds another batch (nothing deleted).

-- @include lease
-- @include records
-- @include cold

local batch_id_key, lease_key, dirtybatch_key, dirty_key = KEYS[2], KEYS[3], KEYS[8], KEYS[9]
local batch_id, owner = ARGV[1], ARGV[2]
local ttls = {c = tonumber(ARGV[3]), cr = tonumber(ARGV[3]), lk = tonumber(ARGV[4]), sb = tonumber(ARGV[4])}

local deleted = 0
if redis.call('GET', batch_id_key) == batch_id then
  for _, name in ipairs(cold.not_in(dirty_key, redis.call('SMEMBERS', dirtybatch_key))) do
    local ttl_seconds = ttls[string.match(name, '^[^}]*}:(%a+):')]
    if ttl_seconds then
      redis.call('EXPIRE', name, ttl_seconds)
    end
  end
  redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6], KEYS[7], dirtybatch_key, batch_id_key)
  deleted = 1
end
if lease.holder(lease_key) == owner then
  redis.call('DEL', lease_key)
end
return deleted
