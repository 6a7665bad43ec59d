#!lua
-- rate_limit: admit one request of a user for one action under a sliding-window log, or refuse it.
--
-- Key layout (hash tag {u:<user_id>}, one slot):
--   KEYS[1]  eng:{u:<user_id>}:rl:<action>  ZSET  member = request id, score = admission time (ms)
-- ARGV:
--   ARGV[1]  window, milliseconds (> 0)
--   ARGV[2]  limit: requests admitted per window
--   ARGV[3]  request id, unique per request and the same on a retry of it (a member of the set)
-- Time is the Redis server's clock (TIME), not the caller's: every api process then judges by the
-- same clock. Redis 7 replicates scripts by their effects, so TIME is allowed before writes.
-- Returns {allowed, remaining, retry_after_ms}:
--   {1, remaining, 0}         admitted and recorded; remaining admissions left in the window
--   {0, 0, retry_after_ms}    refused and not recorded; ms until one more request would be admitted
-- Only admitted requests enter the window: a refused caller who keeps retrying is not locked out.

local key = KEYS[1]
local window_ms = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local request_id = ARGV[3]

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- An entry admitted at t counts while now < t + window.
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now_ms - window_ms))
local count = redis.call('ZCARD', key)

-- A retried call (the client resent it after losing the reply) answers as the first did and takes
-- no second place: without this check it would be refused while its first run holds a place.
if redis.call('ZSCORE', key, request_id) then
  return {1, math.max(limit - count, 0), 0}
end

if count < limit then
  redis.call('ZADD', key, string.format('%d', now_ms), request_id)
  redis.call('PEXPIRE', key, window_ms)
  return {1, limit - count - 1, 0}
end

if limit < 1 then
  return {0, 0, window_ms}
end
-- One more is admitted once count - limit + 1 entries have left: the entry at rank count - limit
-- (the oldest when the count is exactly the limit; later when the limit was lowered).
local entry = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
local retry_after_ms = tonumber(entry[2]) + window_ms - now_ms
if retry_after_ms < 1 then
  retry_after_ms = 1
end
return {0, 0, retry_after_ms}
