#!lua flags=allow-oom
-- capture_uniques: take up to N items whose unique viewers HLLs changed, with their current counts and
-- contents, for the flusher to write to Postgres.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:uvtouch   SET  "<yyyymmdd>:<content_id>" whose daily HLL changed (apply_views adds)
--   KEYS[2]  eng:{s:N}:uvbatch   SET  members taken by a flusher, until Postgres has them
--   KEYS[3]  eng:{s:N}:uvatouch  SET  content ids whose all-time HLL changed
--   KEYS[4]  eng:{s:N}:uvabatch  SET  members taken by a flusher, until Postgres has them
--   derived, same hash tag: eng:{s:N}:uvd:<yyyymmdd>:<content_id> and eng:{s:N}:uv:<content_id> (HLL)
-- ARGV:
--   ARGV[1]  the key prefix of the slot, "eng:{s:N}"
--   ARGV[2]  most members to take from each set (bounds the time of one call)
-- Returns {more, n, member1, count1, hll1, ..., member_n, count_n, hll_n, item1, count1, hll1, ...}:
-- more is 1 when a touch set still holds members; then n daily members, then the all-time ones. An
-- HLL is returned as its bytes (the caller reads the reply undecoded) and its PFCOUNT, read in this
-- one call so they agree. A non-empty batch set (a flusher died before finish_uniques) is returned
-- again, not refilled; the contents are read now, so they are current either way. The HLLs of
-- captured members stay without a TTL (apply_views persisted them) until finish_uniques.
-- Runs at maxmemory too (allow-oom): flushing is what makes those HLLs evictable again.

local prefix, most = ARGV[1], tonumber(ARGV[2])

local function take(touch_key, batch_key)
  local members = redis.call('SMEMBERS', batch_key)
  if #members == 0 then
    members = redis.call('SPOP', touch_key, most)
    if #members > 0 then
      redis.call('SADD', batch_key, unpack(members))
    end
  end
  return members
end

local daily, all_time = take(KEYS[1], KEYS[2]), take(KEYS[3], KEYS[4])
local more = (redis.call('SCARD', KEYS[1]) > 0 or redis.call('SCARD', KEYS[3]) > 0) and 1 or 0
local out = {more, #daily}
local function add(member, key)
  out[#out + 1] = member
  out[#out + 1] = redis.call('PFCOUNT', key)
  out[#out + 1] = redis.call('GET', key) or ''
end
for _, member in ipairs(daily) do
  add(member, prefix .. ':uvd:' .. member)
end
for _, content_id in ipairs(all_time) do
  add(content_id, prefix .. ':uv:' .. content_id)
end
return out
