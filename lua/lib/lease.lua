-- lib/lease: a shard's flush lease, "<owner>|<expiry ms>" without a TTL (an evicted lease would let
-- two flushers capture one shard), judged by Redis's clock.

local lease = {}

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The owner holding the lease now, or false when it is free or expired.
function lease.holder(lease_key)
  local value = redis.call('GET', lease_key)
  if not value then
    return false
  end
  local owner, expires = string.match(value, '^(.*)|(%d+)$')
  if owner == nil or tonumber(expires) <= now_ms() then
    return false
  end
  return owner
end

function lease.take(lease_key, owner, lease_ms)
  redis.call('SET', lease_key, owner .. '|' .. string.format('%d', now_ms() + lease_ms))
end
