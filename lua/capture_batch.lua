-- capture_batch: take a shard's pending deltas, like states, subscriptions and watch-history heartbeats
-- as one flush batch, under a lease.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:delta     HASH   "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[2]  eng:{s:N}:batch     HASH   the captured deltas, until Postgres has them
--   KEYS[3]  eng:{s:N}:batch_id  STRING id of the captured batch (the flush_batches ledger key)
--   KEYS[4]  eng:{s:N}:lease     STRING owner of the shard's flush lease
--   KEYS[5]  eng:{s:N}:sdelta    HASH   "<content_id>|<user_id>" -> like state not yet in Postgres
--   KEYS[6]  eng:{s:N}:sbatch    HASH   the captured like states, until Postgres has them
--   KEYS[7]  eng:{s:N}:subdelta  HASH   "<creator_id>|<user_id>" -> subscription not yet in Postgres
--   KEYS[8]  eng:{s:N}:subbatch  HASH   the captured subscriptions, until Postgres has them
--   KEYS[9]  eng:{s:N}:hdelta    HASH   "<content_id>|<user_id>" -> "<ts_us>|<pct>|<pos>": heartbeats
--                                       not yet in Postgres (N: the user's shard)
--   KEYS[10] eng:{s:N}:hbatch    HASH   the captured heartbeats, until Postgres has them
--   KEYS[11] eng:{s:N}:vdelta    LIST   applied view drains not yet in Postgres (apply_views.lua)
--   KEYS[12] eng:{s:N}:vbatch    LIST   the captured view drains, until Postgres has them
-- ARGV:
--   ARGV[1]  lease owner token
--   ARGV[2]  lease duration, milliseconds
--   ARGV[3]  batch id to use if a new batch is captured
-- Returns:
--   false                                  the shard is leased by another owner
--   {}                                     nothing to flush (no lease taken)
--   {batch_id, {f1, v1, ...}, {s1, v1, ...}, {u1, v1, ...}, {h1, v1, ...}, drains}  the batch to
--                                          write: deltas, like states, subscriptions, heartbeats,
--                                          then the number of captured view drains (binary: the
--                                          caller reads them with LRANGE; under the lease, nothing
--                                          else changes KEYS[12] until finish_batch).
--                                          A stranded batch (an earlier
--                                          capture whose delete never happened) is returned again
--                                          rather than overwritten.

local delta_key, batch_key, batch_id_key, lease_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sdelta_key, sbatch_key, subdelta_key, subbatch_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local hdelta_key, hbatch_key, vdelta_key, vbatch_key = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local owner, lease_ms, new_batch_id = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local holder = redis.call('GET', lease_key)
if holder and holder ~= owner then
  return false
end

local stranded = redis.call('EXISTS', batch_id_key) == 1
if not stranded and redis.call('EXISTS', delta_key, sdelta_key, subdelta_key, hdelta_key, vdelta_key) == 0 then
  if holder then
    redis.call('DEL', lease_key)
  end
  return {}
end

redis.call('SET', lease_key, owner, 'PX', lease_ms)
if not stranded then
  if redis.call('EXISTS', delta_key) == 1 then
    redis.call('RENAME', delta_key, batch_key)
  end
  if redis.call('EXISTS', sdelta_key) == 1 then
    redis.call('RENAME', sdelta_key, sbatch_key)
  end
  if redis.call('EXISTS', subdelta_key) == 1 then
    redis.call('RENAME', subdelta_key, subbatch_key)
  end
  if redis.call('EXISTS', hdelta_key) == 1 then
    redis.call('RENAME', hdelta_key, hbatch_key)
  end
  if redis.call('EXISTS', vdelta_key) == 1 then
    redis.call('RENAME', vdelta_key, vbatch_key)
  end
  redis.call('SET', batch_id_key, new_batch_id)
end
return {
  redis.call('GET', batch_id_key),
  redis.call('HGETALL', batch_key),
  redis.call('HGETALL', sbatch_key),
  redis.call('HGETALL', subbatch_key),
  redis.call('HGETALL', hbatch_key),
  redis.call('LLEN', vbatch_key),
}
