-- apply_views: apply one drain of coalesced view increments for one shard, at most once.
--
-- Key layout (all keys share the hash tag {s:N}, so the call touches one slot):
--   KEYS[1]  eng:{s:N}:live             HASH   "<counter>:<content_id>" -> live count
--   KEYS[2]  eng:{s:N}:delta            HASH   "<counter>:<content_id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:drain:<drain_id> STRING marker: this drain was applied (expires)
--   KEYS[4]  eng:{s:N}:uvtouch          SET    "<yyyymmdd>:<content_id>" whose unique viewers HLLs
--            changed since the flusher last wrote their counts
--   KEYS[5]  eng:{s:N}:vdelta           LIST   applied drains not yet in Postgres, one entry each:
--            ARGV[2] .. ARGV[3] .. ARGV[4] (three msgpack maps, read by the flusher and reconcile)
--   derived, same hash tag (so the same slot), one pair per item with user ids:
--            eng:{s:N}:uv:<content_id>             HLL  user ids, all time
--            eng:{s:N}:uvd:<yyyymmdd>:<content_id> HLL  user ids of that UTC day (expires)
-- ARGV:
--   ARGV[1]  marker TTL, seconds
--   ARGV[2]  msgpack map content_id -> views (integer > 0)
--   ARGV[3]  msgpack map content_id -> watch seconds (integer > 0); may be an empty map
--   ARGV[4]  msgpack map counter -> {content_id -> increment} for the other counters of a drain
--            (completions, skips, replays: playback signals that are not views); may be empty
--   ARGV[5]  msgpack map content_id -> the distinct user ids that viewed it: an array, or a string
--            when there is one; may be an empty map
--   ARGV[6]  the key prefix of the slot, "eng:{s:N}"
--   ARGV[7]  the UTC day of the drain, yyyymmdd
--   ARGV[8]  lifetime of a daily HLL from its first view, seconds
--   ARGV[9]  most drains KEYS[5] may hold: past it (or when 0) the increments are added to the delta
--            hash field by field instead, so a stalled flusher leaves a hash bounded by the items
-- KEYS[4..5] and ARGV[4..9] may be missing, as in drains journaled by a consumer of an earlier
-- version: then the increments go to the delta hash, and without ARGV[5] no unique viewers.
-- Returns 1 when the increments were applied, 0 when this drain id had already been applied
-- (a retry after a lost reply), so a retried drain never counts twice.
-- The items travel as msgpack blobs, not as one ARGV per value: the client packs a whole shard in C.
-- The pending increments are one list entry per drain rather than one HINCRBY per item and counter:
-- half the commands (and AOF records) of a drain whose items are all different.
-- The HLL keys are derived here from the slot's prefix instead of being passed as KEYS (two per item):
-- they carry the same hash tag, so they live in the slot of KEYS[1] on a single Redis and on a cluster.
-- PFADD is idempotent, and a retried drain returns before it anyway.

local EMPTY_MAP = '\128'  -- msgpack {}
local live_key, delta_key, marker_key = KEYS[1], KEYS[2], KEYS[3]
local ttl_seconds = tonumber(ARGV[1])

if redis.call('EXISTS', marker_key) == 1 then
  return 0
end

local drains_key, max_drains = KEYS[5], tonumber(ARGV[9] or '0')
local as_drain = drains_key ~= nil and max_drains > 0 and redis.call('LLEN', drains_key) < max_drains

-- The live counts of a drain: one HMGET and one HSET per 1,000 fields instead of one HINCRBY per
-- field (the script is atomic, so read-add-write is an increment); per field, that saves a command's
-- dispatch and its own AOF record, most of an increment's cost. Sums are formatted with %d, as
-- HINCRBY answers them (a Lua number holds any count exactly up to 2^53).
local fields, amounts = {}, {}
local function apply(counter, increments)
  for content_id, n in pairs(increments) do
    local field = counter .. ':' .. content_id
    fields[#fields + 1] = field
    amounts[#amounts + 1] = n
    if not as_drain then
      redis.call('HINCRBY', delta_key, field, string.format('%d', n))
    end
  end
end

local function add_live()
  for i = 1, #fields, 1000 do  -- unpack() is bounded by Lua's stack
    local last = math.min(i + 999, #fields)
    local current = redis.call('HMGET', live_key, unpack(fields, i, last))
    local pairs_ = {}
    for j = i, last do
      pairs_[#pairs_ + 1] = fields[j]
      pairs_[#pairs_ + 1] = string.format('%d', (tonumber(current[j - i + 1]) or 0) + amounts[j])
    end
    redis.call('HSET', live_key, unpack(pairs_))
  end
end

-- Unique viewers first: should a command fail midway, nothing counted yet, and PFADD is idempotent
-- for the retry.
if ARGV[5] and ARGV[5] ~= EMPTY_MAP then
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
if ARGV[4] and ARGV[4] ~= EMPTY_MAP then
  for counter, increments in pairs(cmsgpack.unpack(ARGV[4])) do
    apply(counter, increments)
  end
end
add_live()
if as_drain then
  redis.call('RPUSH', drains_key, ARGV[2] .. ARGV[3] .. (ARGV[4] or EMPTY_MAP))
end

redis.call('SET', marker_key, '1', 'EX', ttl_seconds)
return 1
