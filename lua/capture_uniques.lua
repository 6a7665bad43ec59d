-- capture_uniques: take up to N items whose unique viewers HLLs changed, with their current counts,
-- for the flusher to write to Postgres.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:uvtouch   SET  "<yyyymmdd>:<content_id>" whose HLLs changed (apply_views adds)
--   KEYS[2]  eng:{s:N}:uvbatch   SET  members taken by a flusher, until Postgres has their counts
--   derived, same hash tag: eng:{s:N}:uvd:<yyyymmdd>:<content_id> and eng:{s:N}:uv:<content_id> (HLL)
-- ARGV:
--   ARGV[1]  the key prefix of the slot, "eng:{s:N}"
--   ARGV[2]  most members to take (bounds the time of one call)
-- Returns {more, member1, day_count1, all_time_count1, member2, ...}: more is 1 when uvtouch still
-- holds members. A non-empty uvbatch (a flusher died before removing it) is returned again, not
-- refilled; the counts are read now, so they are current either way. day_count is 0 when the daily
-- HLL has expired (the caller then keeps what Postgres has). The flusher removes the members from
-- uvbatch (SREM) after its Postgres commit; an item changed meanwhile is in uvtouch again.

local touch_key, batch_key = KEYS[1], KEYS[2]
local prefix, most = ARGV[1], tonumber(ARGV[2])

local members = redis.call('SMEMBERS', batch_key)
if #members == 0 then
  members = redis.call('SPOP', touch_key, most)
  if #members == 0 then
    return {0}
  end
  redis.call('SADD', batch_key, unpack(members))
end

local out = {redis.call('SCARD', touch_key) > 0 and 1 or 0}
for _, member in ipairs(members) do
  local day, content_id = string.sub(member, 1, 8), string.sub(member, 10)
  out[#out + 1] = member
  out[#out + 1] = redis.call('PFCOUNT', prefix .. ':uvd:' .. day .. ':' .. content_id)
  out[#out + 1] = redis.call('PFCOUNT', prefix .. ':uv:' .. content_id)
end
return out
