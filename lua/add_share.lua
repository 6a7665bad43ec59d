#!lua
-- add_share: count one share of a content item (or take back a count whose Postgres row was not
-- committed), checking and storing the Idempotency-Key record in the same call, in one slot.
--
-- The api inserts the share's row in an open Postgres transaction first, then calls this script,
-- then commits; a "replayed" or "conflict" answer rolls the row back, so a retried request never
-- adds a second row or a second count. The item's counts are a cold key (lib/cold.lua).
--
-- Key layout (hash tag {s:N} of the content item):
--   KEYS[1]  eng:{s:N}:c:<content_id>  HASH   the item's live counts (shares, ...)
--   KEYS[2]  eng:{s:N}:delta   HASH    "shares:<content_id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:rec     HASH    records: ARGV[6] -> "<fingerprint>\n<share_id> <shares>";
--                                     "l:<key>" -> the load token of a missing cold key (lib/cold.lua)
--   KEYS[4]  eng:{s:N}:recexp  ZSET    record -> expiry (ms)
--   KEYS[5]  eng:{s:N}:dirty   SET     cold keys changed since the last capture
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter: keys new to Postgres (lib/cold.lua)
-- ARGV:
--   ARGV[1]  content id
--   ARGV[2]  idempotency record lifetime, seconds
--   ARGV[3]  request fingerprint ("" when the request has no Idempotency-Key)
--   ARGV[4]  share id of the row inserted (not yet committed) for this request
--   ARGV[5]  mode: add | undo (undo: the row's commit failed; take the count and the record back)
--   ARGV[6]  the record's name in KEYS[3]
--   ARGV[7]  seeds of missing cold keys, or ""
-- Returns {status, share_id, shares}:
--   status  "added" | "undone" | "replayed" (share_id and shares of the stored first answer) |
--           "conflict" (the key was used for a different request)
-- or {"unknown", key, token} when KEYS[1] is missing (lib/cold.lua).

-- @include records
-- @include cold

local counts_key, delta_key, rec_key, recexp_key, dirty_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local content_id, record_ttl_seconds, fingerprint = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local share_id, mode, record = ARGV[4], ARGV[5], ARGV[6]

if mode ~= 'undo' and fingerprint ~= '' then
  local stored = records.get(rec_key, recexp_key, record)
  if stored then
    local first, stored_id, shares = string.match(stored, '^(.-)\n(%d+) (-?%d+)$')
    local status = (first == fingerprint) and 'replayed' or 'conflict'
    return {status, stored_id, tonumber(shares)}
  end
end

local unknown = cold.load(ARGV[7], rec_key, recexp_key, {counts_key})
if unknown then
  return unknown
end

local amount = (mode == 'undo') and -1 or 1
redis.call('HINCRBY', delta_key, 'shares:' .. content_id, amount)
local shares = redis.call('HINCRBY', counts_key, 'shares', amount)
cold.pin({counts_key}, dirty_key)

if mode == 'undo' then
  if fingerprint ~= '' then
    local stored = records.get(rec_key, recexp_key, record)
    if stored and string.match(stored, '\n(%d+) %-?%d+$') == share_id then
      records.drop(rec_key, recexp_key, record)
    end
  end
  return {'undone', share_id, shares}
end
if fingerprint ~= '' then
  records.put(rec_key, recexp_key, record, string.format('%s\n%s %d', fingerprint, share_id, shares), record_ttl_seconds)
end
return {'added', share_id, shares}
