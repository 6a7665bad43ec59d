-- lib/records: records with a lifetime and no TTL (docs/redis-memory.md): Idempotency-Key answers,
-- comment count markers, drain marks. A record is a field of the shard's eng:{s:N}:rec hash; its
-- expiry (ms, Redis's clock) is its score in eng:{s:N}:recexp, where sweep_records.lua finds it.

local records = {}

function records.now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The record, or false when there is none (or it expired and was not swept yet).
function records.get(rec_key, recexp_key, name)
  local value = redis.call('HGET', rec_key, name)
  if not value then
    return false
  end
  local expires = tonumber(redis.call('ZSCORE', recexp_key, name) or '0')
  if expires <= records.now_ms() then
    return false
  end
  return value
end

function records.put(rec_key, recexp_key, name, value, ttl_seconds)
  redis.call('HSET', rec_key, name, value)
  redis.call('ZADD', recexp_key, string.format('%d', records.now_ms() + ttl_seconds * 1000), name)
end

function records.drop(rec_key, recexp_key, name)
  redis.call('HDEL', rec_key, name)
  redis.call('ZREM', recexp_key, name)
end
