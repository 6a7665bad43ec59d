#!lua
-- rate_limit: admit one request of a user for one action under a sliding-window log, or refuse it.
--
-- Key layout (hash tag {u:<user_id>}, one slot):
--   KEYS[1]  eng:{u:<user_id>}:rl:<action>  ZSET  member = request id, score = admission time (ms)
-- ARGV:
--   ARGV[1]  window, milliseconds (> 0)
--   ARGV[2]  limit: requests admitted per window
--   ARGV[3]  request id, unique per request and the same on a retry of it (a member of the set)
-- Returns {allowed, remaining, retry_after_ms} (lib/ratelimit.lua):
--   {1, remaining, 0}         admitted and recorded; remaining admissions left in the window
--   {0, 0, retry_after_ms}    refused and not recorded; ms until one more request would be admitted

-- @include ratelimit

return ratelimit.admit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
