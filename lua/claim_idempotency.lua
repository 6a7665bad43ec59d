#!lua
-- claim_idempotency: claim an Idempotency-Key for a request that Redis does not otherwise see (a view
-- goes to the api's in-process buffer first), or release a claim whose request was then refused.
--
-- Key layout (the records of one shard: {s:N} of the item for a single view, of the ingest client's
-- user id for a batch; lib/records.lua):
--   KEYS[1]  eng:{s:N}:rec     HASH  ARGV[5] -> "<fingerprint>\n<answer>": the first request's
--                                    fingerprint and its answer
--   KEYS[2]  eng:{s:N}:recexp  ZSET  record -> expiry (ms)
-- ARGV:
--   ARGV[1]  mode: claim | release
--   ARGV[2]  request fingerprint (a hash of what makes the request itself)
--   ARGV[3]  answer to store (claim) -- opaque to the script
--   ARGV[4]  record lifetime, seconds (claim)
--   ARGV[5]  the record's name: "v|<content_id>|<user_id>|<key>" or "b|<user_id>|<key>"
-- Returns {status, answer}:
--   claim:   "claimed" (the record is this request's now) | "replayed" (the same request came first:
--            its answer) | "conflict" (the key was used for a different request)
--   release: "released" (the record was this request's and is gone) | "kept" (someone else's)

-- @include records

local rec_key, recexp_key = KEYS[1], KEYS[2]
local mode, fingerprint, answer = ARGV[1], ARGV[2], ARGV[3]
local ttl_seconds, record = tonumber(ARGV[4]), ARGV[5]

local stored = records.get(rec_key, recexp_key, record)
if mode == 'release' then
  if stored and string.sub(stored, 1, #fingerprint + 1) == fingerprint .. '\n' then
    records.drop(rec_key, recexp_key, record)
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
records.put(rec_key, recexp_key, record, fingerprint .. '\n' .. answer, ttl_seconds)
return {'claimed', answer}
