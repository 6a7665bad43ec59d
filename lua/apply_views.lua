-- apply_views: apply one drain of coalesced view increments for one shard, at most once.
--
-- Key layout (all keys share the hash tag {s:N}, so the call touches one slot):
--   KEYS[1]      eng:{s:N}:delta            HASH  "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[2]      eng:{s:N}:drain:<drain_id> STRING marker: this drain was applied (expires)
--   KEYS[3..]    eng:{s:N}:cnt:<content_id> HASH  live counts: views, watch_seconds, likes, ...
-- ARGV:
--   ARGV[1]      marker TTL, seconds
--   ARGV[2..]    per item, in the order of KEYS[3..]: content_id, views, watch_seconds (integers)
-- Returns 1 when the increments were applied, 0 when this drain id had already been applied
-- (a retry after a lost reply), so a retried drain never counts twice.

local delta_key = KEYS[1]
local marker_key = KEYS[2]
local ttl_seconds = tonumber(ARGV[1])

if redis.call('EXISTS', marker_key) == 1 then
  return 0
end

for i = 3, #KEYS do
  local base = (i - 3) * 3 + 2
  local content_id = ARGV[base]
  local views = tonumber(ARGV[base + 1])
  local watch_seconds = tonumber(ARGV[base + 2])
  if views ~= 0 then
    redis.call('HINCRBY', KEYS[i], 'views', views)
    redis.call('HINCRBY', delta_key, 'views:' .. content_id, views)
  end
  if watch_seconds ~= 0 then
    redis.call('HINCRBY', KEYS[i], 'watch_seconds', watch_seconds)
    redis.call('HINCRBY', delta_key, 'watch_seconds:' .. content_id, watch_seconds)
  end
end

redis.call('SET', marker_key, '1', 'EX', ttl_seconds)
return 1
