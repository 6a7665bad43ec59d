-- apply_views: apply one drain of coalesced view increments for one shard, at most once.
--
-- Key layout (all keys share the hash tag {s:N}, so the call touches one slot):
--   KEYS[1]  eng:{s:N}:live             HASH   "<counter>:<content_id>" -> live count
--   KEYS[2]  eng:{s:N}:delta            HASH   "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:drain:<drain_id> STRING marker: this drain was applied (expires)
--   KEYS[4]  optional (with ARGV[5]): eng:{s:N}:uvtouch  SET  "<yyyymmdd>:<content_id>" whose
--            unique viewers HLLs changed since the flusher last wrote their counts
--   derived, same hash tag (so the same slot), one pair per item with user ids:
--            eng:{s:N}:uv:<content_id>             HLL  user ids, all time
--            eng:{s:N}:uvd:<yyyymmdd>:<content_id> HLL  user ids of that UTC day (expires)
-- ARGV:
--   ARGV[1]  marker TTL, seconds
--   ARGV[2]  msgpack map content_id -> views (integer > 0)
--   ARGV[3]  msgpack map content_id -> watch seconds (integer > 0); may be an empty map
--   ARGV[4]  optional: msgpack map counter -> {content_id -> increment} for the other counters of a
--            drain (completions, skips, replays: playback signals that are not views); an empty map
--            when absent and ARGV[5] is given
--   ARGV[5]  optional: msgpack map content_id -> the distinct user ids that viewed it: an array, or
--            a string when there is one
--   ARGV[6]  with ARGV[5]: the key prefix of the slot, "eng:{s:N}"
--   ARGV[7]  with ARGV[5]: the UTC day of the drain, yyyymmdd
--   ARGV[8]  with ARGV[5]: lifetime of a daily HLL from its first view, seconds
-- Returns 1 when the increments were applied, 0 when this drain id had already been applied
-- (a retry after a lost reply), so a retried drain never counts twice.
-- The items travel as msgpack blobs, not as one ARGV per value: the client packs a whole shard in C.
-- The HLL keys are derived here from the slot's prefix instead of being passed as KEYS (two per item):
-- they carry the same hash tag, so they live in the slot of KEYS[1] on a single Redis and on a cluster.
-- PFADD is idempotent, and a retried drain returns before it anyway.

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

-- Unique viewers first: should a command fail midway, nothing counted yet, and PFADD is idempotent
-- for the retry.
if ARGV[5] then
  local touch_key, prefix, day, day_ttl_seconds = KEYS[4], ARGV[6], ARGV[7], tonumber(ARGV[8])
  local day_prefix, all_prefix = prefix .. ':uvd:' .. day .. ':', prefix .. ':uv:'
  local function pfadd(key, users)
    if type(users) == 'string' then
      return redis.call('PFADD', key, users)
    end
    local changed = 0
    for i = 1, #users, 1000 do  -- unpack() is bounded by Lua's stack: at most 1,000 at a time
      changed = math.max(changed, redis.call('PFADD', key, unpack(users, i, math.min(i + 999, #users))))
    end
    return changed
  end
  local touched = {}  -- "<day>:<content_id>" of the items whose HLLs changed: one SADD at the end
  for content_id, users in pairs(cmsgpack.unpack(ARGV[5])) do
    local day_key = day_prefix .. content_id
    local changed = pfadd(all_prefix .. content_id, users)
    if pfadd(day_key, users) == 1 then
      redis.call('EXPIRE', day_key, day_ttl_seconds, 'NX')
      changed = 1
    end
    if changed == 1 then
      touched[#touched + 1] = day .. ':' .. content_id
    end
  end
  for i = 1, #touched, 1000 do
    redis.call('SADD', touch_key, unpack(touched, i, math.min(i + 999, #touched)))
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
