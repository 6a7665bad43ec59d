-- finish_batch: forget a flush batch once Postgres has committed it, and release the lease.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:batch     HASH    the captured deltas
--   KEYS[2]  eng:{s:N}:batch_id  STRING  id of the captured batch
--   KEYS[3]  eng:{s:N}:lease     STRING  owner of the shard's flush lease
--   KEYS[4]  eng:{s:N}:sbatch    HASH    the captured like states
--   KEYS[5]  eng:{s:N}:subbatch  HASH    the captured subscriptions
--   KEYS[6]  eng:{s:N}:hbatch    HASH    the captured watch-history heartbeats
--   KEYS[7]  eng:{s:N}:vbatch    LIST    the captured view drains
-- ARGV:
--   ARGV[1]  batch id that was committed (or found already in the ledger)
--   ARGV[2]  lease owner token
-- Returns 1 when the batch was deleted, 0 when the shard holds another batch (nothing deleted).
-- Called only after the Postgres commit: deleting first would lose the batch on a crash.

local batch_key, batch_id_key, lease_key, sbatch_key, subbatch_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local hbatch_key, vbatch_key = KEYS[6], KEYS[7]
local batch_id, owner = ARGV[1], ARGV[2]

local deleted = 0
if redis.call('GET', batch_id_key) == batch_id then
  redis.call('DEL', batch_key, sbatch_key, subbatch_key, hbatch_key, vbatch_key, batch_id_key)
  deleted = 1
end
if redis.call('GET', lease_key) == owner then
  redis.call('DEL', lease_key)
end
return deleted
