#!lua flags=allow-oom
-- capture_batch: take a shard's pending deltas, like states, subscriptions, watch-history heartbeats and
-- the list of changed cold keys as one flush batch, under a lease.
--
-- Runs at maxmemory too (allow-oom): capturing and flushing is what frees memory.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:delta      HASH   "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[2]  eng:{s:N}:batch      HASH   the captured deltas, until Postgres has them
--   KEYS[3]  eng:{s:N}:batch_id   STRING id of the captured batch (the flush_batches ledger key)
--   KEYS[4]  eng:{s:N}:lease      STRING "<owner>|<expiry ms>": the shard's flush lease (lib/lease.lua)
--   KEYS[5]  eng:{s:N}:sdelta     HASH   "<content_id>|<user_id>" -> like state not yet in Postgres
--   KEYS[6]  eng:{s:N}:sbatch     HASH   the captured like states, until Postgres has them
--   KEYS[7]  eng:{s:N}:subdelta   HASH   "<creator_id>|<user_id>" -> subscription not yet in Postgres
--   KEYS[8]  eng:{s:N}:subbatch   HASH   the captured subscriptions, until Postgres has them
--   KEYS[9]  eng:{s:N}:hdelta     HASH   "<content_id>|<user_id>" -> "<ts_us>|<pct>|<pos>": heartbeats
--                                        not yet in Postgres (N: the user's shard)
--   KEYS[10] eng:{s:N}:hbatch     HASH   the captured heartbeats, until Postgres has them
--   KEYS[11] eng:{s:N}:vdelta     LIST   applied view drains not yet in Postgres (apply_views.lua)
--   KEYS[12] eng:{s:N}:vbatch     LIST   the captured view drains, until Postgres has them
--   KEYS[13] eng:{s:N}:dirty      SET    cold keys changed since the last capture (lib/cold.lua)
--   KEYS[14] eng:{s:N}:dirtybatch SET    the captured ones: finish_batch gives them their TTL back
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

-- @include lease

local delta_key, batch_key, batch_id_key, lease_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owner, lease_ms, new_batch_id = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local holder = lease.holder(lease_key)
if holder and holder ~= owner then
  return false
end

local stranded = redis.call('EXISTS', batch_id_key) == 1
local pending = {delta_key, KEYS[5], KEYS[7], KEYS[9], KEYS[11], KEYS[13]}
if not stranded and redis.call('EXISTS', unpack(pending)) == 0 then
  if holder then
    redis.call('DEL', lease_key)
  end
  return {}
end

lease.take(lease_key, owner, lease_ms)
if not stranded then
  for _, pair in ipairs({{1, 2}, {5, 6}, {7, 8}, {9, 10}, {11, 12}, {13, 14}}) do
    if redis.call('EXISTS', KEYS[pair[1]]) == 1 then
      redis.call('RENAME', KEYS[pair[1]], KEYS[pair[2]])
    end
  end
  redis.call('SET', batch_id_key, new_batch_id)
end
return {
  redis.call('GET', batch_id_key),
  redis.call('HGETALL', batch_key),
  redis.call('HGETALL', KEYS[6]),
  redis.call('HGETALL', KEYS[8]),
  redis.call('HGETALL', KEYS[10]),
  redis.call('LLEN', KEYS[12]),
}
