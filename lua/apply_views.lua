#!lua
-- apply_views: apply one drain of coalesced view increments for one shard, at most once.
--
-- Key layout (all keys share the hash tag {s:N}, so the call touches one slot):
--   KEYS[1]  eng:{s:N}:delta     HASH  "<counter>:<content_id>" -> increment not yet in Postgres; with
--            "dv:<yyyymmdd>:<content_id>" / "dw:…" the day's views / watch seconds (past ARGV[9])
--   KEYS[2]  eng:{s:N}:vdelta    LIST  applied drains not yet in Postgres, one entry each: the day
--            (msgpack string) .. ARGV[3] .. ARGV[4] .. ARGV[5] (lib/entries.lua; read by the flusher,
--            reconcile and the daily stats)
--   KEYS[3]  eng:{s:N}:uvtouch   SET   "<yyyymmdd>:<content_id>" whose daily HLL changed since the
--            flusher last wrote it
--   KEYS[4]  eng:{s:N}:uvatouch  SET   content ids whose all-time HLL changed likewise
--   KEYS[5]  eng:{s:N}:rec       HASH  records: "d:<process>" -> the process's drain mark; "l:<key>" ->
--                                     the load token of a missing cold key (lib/cold.lua)
--   KEYS[6]  eng:{s:N}:recexp    ZSET  record -> expiry (ms)
--   KEYS[7]  eng:{s:N}:dirty     SET   cold keys changed since the last capture
--   derived, same hash tag (so the same slot), per item of the drain:
--            eng:{s:N}:c:<content_id>              HASH  live counts (cold: lib/cold.lua)
--            eng:{s:N}:uv:<content_id>             HLL   user ids, all time (items with user ids)
--            eng:{s:N}:uvd:<yyyymmdd>:<content_id> HLL   user ids of that UTC day
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter: keys new to Postgres (lib/cold.lua)
--   derived, same hash tag: eng:{s:N}:tr:<bucket>, eng:{s:N}:trh:<bucket // 12>  ZSET  views per item in
--            the drain's 5-minute and 1-hour trending buckets (TTL 2 h and 8 days)
-- ARGV:
--   ARGV[1]  process id: the drain's sender (an api process, a consumer process)
--   ARGV[2]  the drain's sequence number, counted per process and shard from 1
--   ARGV[3]  msgpack map content_id -> views (integer > 0)
--   ARGV[4]  msgpack map content_id -> watch seconds (integer > 0); may be an empty map
--   ARGV[5]  msgpack map counter -> {content_id -> increment} for the other counters of a drain
--            (completions, skips, replays: playback signals that are not views); may be empty
--   ARGV[6]  msgpack map content_id -> the distinct user ids that viewed it: an array, or a string
--            when there is one; may be an empty map
--   ARGV[7]  the key prefix of the slot, "eng:{s:N}"
--   ARGV[8]  the UTC day of the drain, yyyymmdd, and its 5-minute trending bucket (epoch s // 300):
--            "yyyymmdd:<bucket>" ("yyyymmdd" alone: no trending, a drain journaled by an older release)
--   ARGV[9]  most drains KEYS[2] may hold: past it (or when 0) the increments are added to the delta
--            hash field by field instead, so a stalled flusher leaves a hash bounded by the items
--   ARGV[10] lifetime of the process's drain mark, seconds
--   ARGV[11] seeds of missing cold keys, or "" (lib/cold.lua)
-- Returns 1 when the increments were applied; 0 when this drain had already been applied (a retry
-- after a lost reply, or after an "unknown"), so a retried drain never counts twice; or
-- {"unknown", key, token, ...} when an item's counts are missing, or an HLL Postgres holds (the item's
-- uva / uvd flags say so) is missing: nothing is applied then.
--
-- The drain mark "<n>[,<m>...]" says: every drain up to n was applied, and m... above it. A retry
-- finds its sequence there; the few drains applied out of order (a pipelined drain answered
-- "unknown" while the next one applied) are listed until the gap below them closes. One record per
-- live process and shard, whatever the rate: the sweeper forgets a process silent for ARGV[10] s.
-- The items travel as msgpack blobs, not as one ARGV per value: the client packs a whole shard in C.
-- The pending increments are one list entry per drain rather than one HINCRBY per item and counter:
-- half the commands (and AOF records) of a drain whose items are all different.

-- @include records
-- @include cold

local EMPTY_MAP = '\128'  -- msgpack {}
local delta_key, drains_key, touch_key, all_touch_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rec_key, recexp_key, dirty_key = KEYS[5], KEYS[6], KEYS[7]
local process, seq = ARGV[1], tonumber(ARGV[2])
local prefix, day, max_drains, mark_ttl_seconds = ARGV[7], ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local bucket = ''
do
  local d, b = string.match(day, '^(%d*):(%d+)$')
  if d then
    day, bucket = d, b
  end
end

-- Applied before?
local mark_name = 'd:' .. process
local mark = records.get(rec_key, recexp_key, mark_name)
local hwm, extras = 0, {}
if mark then
  hwm = tonumber(string.match(mark, '^(%d+)'))
  for s in string.gmatch(mark, ',(%d+)') do
    extras[tonumber(s)] = true
  end
end
if seq <= hwm or extras[seq] then
  return 0
end

local views, watch = cmsgpack.unpack(ARGV[3]), cmsgpack.unpack(ARGV[4])
local signals = (ARGV[5] ~= EMPTY_MAP) and cmsgpack.unpack(ARGV[5]) or {}
local viewers = (ARGV[6] ~= EMPTY_MAP) and cmsgpack.unpack(ARGV[6]) or {}

-- Every cold key the drain needs, loaded.
cold.seed(ARGV[11], rec_key, recexp_key)
local items, names = {}, {}
local function collect(increments)
  for content_id in pairs(increments) do
    if not items[content_id] then
      items[content_id] = prefix .. ':c:' .. content_id
      names[#names + 1] = items[content_id]
    end
  end
end
collect(views)
collect(watch)
for _, increments in pairs(signals) do
  collect(increments)
end
-- A key the dirty set lists is present (it carries no TTL until the flusher has its change, and only
-- the flusher takes it off): no EXISTS, and no PERSIST at the end. Only the others are checked.
local pinned = cold.members(dirty_key, names)
local unsure = {}
for _, name in ipairs(names) do
  if not pinned[name] then
    unsure[#unsure + 1] = name
  end
end
local missing, created = cold.settle(rec_key, unsure)  -- items new to Postgres are created empty, pinned
for _, name in ipairs(created) do
  pinned[name] = true
end
local absent_counts = {}
for _, name in ipairs(missing) do
  absent_counts[name] = true
end
-- Likewise an HLL whose member the touch set lists is present and without a TTL until the flusher
-- has it (finish_uniques gives the TTL back only to members not listed again).
local viewed, day_members = {}, {}
for content_id in pairs(viewers) do
  viewed[#viewed + 1] = content_id
  day_members[#day_members + 1] = day .. ':' .. content_id
end
local all_listed, day_listed = cold.members(all_touch_key, viewed), cold.members(touch_key, day_members)
local hlls, hll_names = {}, {}
for i, content_id in ipairs(viewed) do
  local all_key, day_key = prefix .. ':uv:' .. content_id, prefix .. ':uvd:' .. day_members[i]
  hlls[#hlls + 1] = {items[content_id], all_key, day_key}
  if not all_listed[content_id] then
    hll_names[#hll_names + 1] = all_key
  end
  if not day_listed[day_members[i]] then
    hll_names[#hll_names + 1] = day_key
  end
end
local absent_hlls = {}
for _, name in ipairs(cold.absent(hll_names)) do
  absent_hlls[name] = true
end
for _, hll in ipairs(hlls) do
  local counts_key, all_key, day_key = hll[1], hll[2], hll[3]
  if absent_hlls[all_key] or absent_hlls[day_key] then
    -- A missing HLL is created empty unless Postgres holds one (the counts' flags say; unknown
    -- counts: ask the loader, which seeds "" when Postgres has none).
    local flags = absent_counts[counts_key] and {'1', day} or redis.call('HMGET', counts_key, 'uva', 'uvd')
    if absent_hlls[all_key] and flags[1] == '1' then
      missing[#missing + 1] = all_key
    end
    if absent_hlls[day_key] and flags[2] and flags[2] >= day then
      missing[#missing + 1] = day_key
    end
  end
end
if #missing > 0 then
  return cold.unknown(rec_key, recexp_key, missing)
end

-- Unique viewers first: should a command fail midway, nothing counted yet, and PFADD is idempotent
-- for the retry.
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
local touched, all_touched = {}, {}  -- one SADD each at the end
for i, content_id in ipairs(viewed) do
  local users, day_member = viewers[content_id], day_members[i]
  local all_key, day_key = prefix .. ':uv:' .. content_id, prefix .. ':uvd:' .. day_member
  if pfadd(all_key, users) == 1 and not all_listed[content_id] then
    redis.call('PERSIST', all_key)
    all_touched[#all_touched + 1] = content_id
  end
  if pfadd(day_key, users) == 1 and not day_listed[day_member] then
    redis.call('PERSIST', day_key)
    touched[#touched + 1] = day_member
  end
end
for i = 1, #touched, 1000 do
  redis.call('SADD', touch_key, unpack(touched, i, math.min(i + 999, #touched)))
end
for i = 1, #all_touched, 1000 do
  redis.call('SADD', all_touch_key, unpack(all_touched, i, math.min(i + 999, #all_touched)))
end

-- The counts, and what the flusher will add to Postgres.
local as_drain = max_drains > 0 and redis.call('LLEN', drains_key) < max_drains
local function apply(counter, increments)
  for content_id, n in pairs(increments) do
    local amount = string.format('%d', n)
    redis.call('HINCRBY', items[content_id], counter, amount)
    if not as_drain then
      redis.call('HINCRBY', delta_key, counter .. ':' .. content_id, amount)
    end
  end
end
apply('views', views)
apply('watch_seconds', watch)
if not as_drain and day ~= '' then  -- the day's counts (daily stats), field by field too
  for content_id, n in pairs(views) do
    redis.call('HINCRBY', delta_key, 'dv:' .. day .. ':' .. content_id, string.format('%d', n))
  end
  for content_id, n in pairs(watch) do
    redis.call('HINCRBY', delta_key, 'dw:' .. day .. ':' .. content_id, string.format('%d', n))
  end
end
for counter, increments in pairs(signals) do
  apply(counter, increments)
end
local fresh = {}  -- present keys the dirty set did not list: pinned now
for _, name in ipairs(unsure) do
  if not pinned[name] then
    fresh[#fresh + 1] = name
  end
end
cold.persist(fresh, dirty_key)
-- Trending: the views of this drain in its 5-minute and 1-hour buckets (they expire: a lost bucket only
-- changes trending).
if bucket ~= '' and next(views) then
  local minute_key = prefix .. ':tr:' .. bucket
  local hour_key = prefix .. ':trh:' .. string.format('%d', math.floor(tonumber(bucket) / 12))
  for content_id, n in pairs(views) do
    local amount = string.format('%d', n)
    redis.call('ZINCRBY', minute_key, amount, content_id)
    redis.call('ZINCRBY', hour_key, amount, content_id)
  end
  redis.call('EXPIRE', minute_key, 7200, 'NX')
  redis.call('EXPIRE', hour_key, 8 * 86400, 'NX')
end
if as_drain then
  local dated = (day ~= '') and cmsgpack.pack(day) or ''
  redis.call('RPUSH', drains_key, dated .. ARGV[3] .. ARGV[4] .. ARGV[5])
end

-- The drain mark: the sequence joins the applied ones; the gap below closes when it can.
extras[seq] = true
while extras[hwm + 1] do
  extras[hwm + 1] = nil
  hwm = hwm + 1
end
local parts = {string.format('%d', hwm)}
for s in pairs(extras) do
  parts[#parts + 1] = string.format('%d', s)
end
records.put(rec_key, recexp_key, mark_name, table.concat(parts, ','), mark_ttl_seconds)
return 1
