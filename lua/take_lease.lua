#!lua flags=allow-oom
-- take_lease: take a shard's flush lease, or renew it when this owner already holds it.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:lease  STRING  "<owner>|<expiry ms>" (lib/lease.lua: no TTL, so never evicted)
-- ARGV:
--   ARGV[1]  owner token
--   ARGV[2]  lease duration, milliseconds
-- Returns 1 when the caller holds the lease for ARGV[2] ms from now, 0 when another owner holds it.
-- One script, so a lease that expires between the check and the write is never taken from its
-- new holder (a GET then SET from the client could overwrite it).

-- @include lease

local lease_key, owner, lease_ms = KEYS[1], ARGV[1], tonumber(ARGV[2])

local holder = lease.holder(lease_key)
if holder and holder ~= owner then
  return 0
end
lease.take(lease_key, owner, lease_ms)
return 1
