-- claim_idempotency: claim an Idempotency-Key for a request that Redis does not otherwise see (a view
-- goes to the api's in-process buffer first), or release a claim whose request was then refused.
--
-- Key layout (one key; its hash tag is the caller's: {s:N} of the item for a single view,
-- {u:<user_id>} of the ingest client for a batch):
--   KEYS[1]  eng:{s:N}:videm:<content_id>|<user_id>|<key>  or  eng:{u:<user_id>}:bidem:<key>
--            STRING  "<fingerprint>\n<answer>": the first request's fingerprint and its answer
-- ARGV:
--   ARGV[1]  mode: claim | release
--   ARGV[2]  request fingerprint (a hash of what makes the request itself)
--   ARGV[3]  answer to store (claim) -- opaque to the script
--   ARGV[4]  record TTL, seconds (claim)
-- Returns {status, answer}:
--   claim:   "claimed" (the record is this request's now) | "replayed" (the same request came first:
--            its answer) | "conflict" (the key was used for a different request)
--   release: "released" (the record was this request's and is gone) | "kept" (someone else's)

local record_key = KEYS[1]
local mode, fingerprint, answer = ARGV[1], ARGV[2], ARGV[3]
local ttl_seconds = tonumber(ARGV[4])

local stored = redis.call('GET', record_key)
if mode == 'release' then
  if stored and string.sub(stored, 1, #fingerprint + 1) == fingerprint .. '\n' then
    redis.call('DEL', record_key)
    return {'released', ''}
  end
  return {'kept', ''}
end

if stored then
  local first, first_answer = string.match(stored, '^(.-)\n(.*)$')
  if first == fingerprint then
    return {'replayed', first_answer}
  end
  return {'conflict', ''}
end
redis.call('SET', record_key, fingerprint .. '\n' .. answer, 'EX', ttl_seconds)
return {'claimed', answer}
