#!lua flags=no-writes
-- top_views: the items with the most views in one shard over a trending window (daemon/trending.py).
--
--   KEYS[1]  eng:{s:N}:tr:<b> or eng:{s:N}:trh:<h>  ZSET  content_id -> views in that bucket: the window's
--            newest bucket; the others are derived, same hash tag: the same name with each bucket
--            number from ARGV[2] to the newest's (a missing one counts as empty)
--   ARGV[1]  how many items at least: the top ones, and any more tied with the last of them
--   ARGV[2]  the window's oldest bucket number
-- Returns {content_id, views, ...}, most views first.

local limit = tonumber(ARGV[1])
local base, newest = string.match(KEYS[1], '^(.*:)(%d+)$')
local args = {0}
for bucket = tonumber(ARGV[2]), tonumber(newest) do
  args[#args + 1] = base .. string.format('%d', bucket)
end
args[1] = #args - 1
args[#args + 1] = 'WITHSCORES'
local scored = redis.call('ZUNION', unpack(args))  -- ascending by score: the top ones at the end
local out = {}
local last
for i = #scored - 1, 1, -2 do
  local score = tonumber(scored[i + 1])
  if #out >= 2 * limit and score < last then
    break
  end
  out[#out + 1] = scored[i]
  out[#out + 1] = scored[i + 1]
  last = score
end
return out
