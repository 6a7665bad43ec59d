-- lib/ratelimit: one user's sliding-window log for one action (rate_limit.lua, and set_reaction.lua
-- when it takes the limit in the same call). Time is the Redis server's clock (TIME), so every api
-- process judges by the same clock; Redis 7 replicates scripts by their effects, so TIME is allowed
-- before writes.

local ratelimit = {}

-- Admit and record request_id in the log at key, or refuse it: {1, remaining, 0} admitted (remaining
-- admissions left in the window), {0, 0, retry_after_ms} refused and not recorded. Only admitted
-- requests enter the window: a refused caller who keeps retrying is not locked out.
function ratelimit.admit(key, window_ms, limit, request_id)
  local time = redis.call('TIME')
  local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

  -- An entry admitted at t counts while now < t + window.
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now_ms - window_ms))
  local count = redis.call('ZCARD', key)

  -- A retried call (the client resent it after losing the reply, or a script re-sent with the seeds
  -- of its cold keys) answers as the first did and takes no second place.
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
end
