-- count_comments: apply the comment count changes of some comment rows of one shard, each at most once.
--
-- A comment row is counted (+1) once it exists and uncounted (-1) once it is deleted; the row's
-- `counted` flag in Postgres says which change is already in Redis (daemon/comment_counts.py). Each
-- change carries a marker, so a change applied by a call whose Postgres commit then failed is not
-- applied again when the row is settled a second time.
--
-- Key layout (hash tag {s:N} of the content items, one slot):
--   KEYS[1]    eng:{s:N}:live     HASH    "comments:<content_id>" -> live comment count
--   KEYS[2]    eng:{s:N}:delta    HASH    "comments:<content_id>" -> increment not yet in Postgres
--   KEYS[2+i]  eng:{s:N}:cmtmark:<comment_id>:<0|1>  STRING  marker of change i (1: counted, 0: uncounted)
-- ARGV:
--   ARGV[1]  mode: apply | forget (forget: delete the markers, once Postgres has the flags)
--   ARGV[2]  marker TTL, seconds
--   then     for each change i: content id, amount (1 or -1)
-- Returns the number of changes applied (apply: those whose marker was not yet set), or of markers
-- deleted (forget).

local live_key, delta_key = KEYS[1], KEYS[2]
local mode, ttl_seconds = ARGV[1], tonumber(ARGV[2])
local changes = #KEYS - 2

if mode == 'forget' then
  local deleted = 0
  for i = 1, changes do
    deleted = deleted + redis.call('DEL', KEYS[2 + i])
  end
  return deleted
end

local applied = 0
for i = 1, changes do
  if redis.call('SET', KEYS[2 + i], '1', 'NX', 'EX', ttl_seconds) then
    local field = 'comments:' .. ARGV[1 + 2 * i]
    local amount = tonumber(ARGV[2 + 2 * i])
    redis.call('HINCRBY', live_key, field, amount)
    redis.call('HINCRBY', delta_key, field, amount)
    applied = applied + 1
  end
end
return applied
