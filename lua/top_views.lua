#!lua flags=no-writes
-- top_views: the items with the most views in one shard over a trending window (daemon/trending.py).
--
--   KEYS[1]    eng:{s:N}:tr:<bucket> or eng:{s:N}:trh:<hour>  ZSET  content_id -> views in that bucket:
--              the window's oldest bucket
--   KEYS[2..]  the window's other buckets (a missing one counts as empty)
--   ARGV[1]    how many items at least: the top ones, and any more tied with the last of them
-- Returns {content_id, views, ...}, most views first.

local limit = tonumber(ARGV[1])
local args = {#KEYS}
for _, key in ipairs(KEYS) do
  args[#args + 1] = key
end
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
