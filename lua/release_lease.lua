#!lua flags=allow-oom
-- release_lease: give up a shard's flush lease if we still hold it (a flusher stopping early).
--
--   KEYS[1]  eng:{s:N}:lease  STRING  "<owner>|<expiry ms>" (lib/lease.lua)
--   ARGV[1]  lease owner token
-- Returns 1 when the lease was released, 0 when another owner holds it or it had expired.

-- @include lease

if lease.holder(KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
