-- apply_views: apply one drain of coalesced view increments for one shard, at most once.
--
-- Key layout (all keys share the hash tag {s:N}, so the call touches one slot):
--   KEYS[1]  eng:{s:N}:live             HASH   "<counter>:<content_id>" -> live count
--   KEYS[2]  eng:{s:N}:delta            HASH   "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:drain:<drain_id> STRING marker: this drain was applied (expires)
-- ARGV:
--   ARGV[1]  marker TTL, seconds
--   ARGV[2]  msgpack map content_id -> views (integer > 0)
--   ARGV[3]  msgpack map content_id -> watch seconds (integer > 0); may be an empty map
--   ARGV[4]  optional: msgpack map counter -> {content_id -> increment} for the other counters of a
--            drain (completions, skips, replays: playback signals that are not views)
-- Returns 1 when the increments were applied, 0 when this drain id had already been applied
-- (a retry after a lost reply), so a retried drain never counts twice.
-- The items travel as msgpack blobs, not as one ARGV per value: the client packs a whole shard in C.

local live_key, delta_key, marker_key = KEYS[1], KEYS[2], KEYS[3]
local ttl_seconds = tonumber(ARGV[1])

if redis.call('EXISTS', marker_key) == 1 then
  return 0
end

local function apply(counter, increments)
  for content_id, n in pairs(increments) do
    local field = counter .. ':' .. content_id
    local amount = string.format('%d', n)
    redis.call('HINCRBY', live_key, field, amount)
    redis.call('HINCRBY', delta_key, field, amount)
  end
end

apply('views', cmsgpack.unpack(ARGV[2]))
apply('watch_seconds', cmsgpack.unpack(ARGV[3]))
if ARGV[4] then
  for counter, increments in pairs(cmsgpack.unpack(ARGV[4])) do
    apply(counter, increments)
  end
end

redis.call('SET', marker_key, '1', 'EX', ttl_seconds)
return 1
