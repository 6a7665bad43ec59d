-- add_share: count one share of a content item (or take back a count whose Postgres row was not
-- committed), checking and storing the Idempotency-Key record in the same call, in one slot.
--
-- The api inserts the share's row in an open Postgres transaction first, then calls this script,
-- then commits; a "replayed" or "conflict" answer rolls the row back, so a retried request never
-- adds a second row or a second count.
--
-- Key layout (hash tag {s:N} of the content item):
--   KEYS[1]  eng:{s:N}:live    HASH    "shares:<content_id>" -> live share count
--   KEYS[2]  eng:{s:N}:delta   HASH    "shares:<content_id>" -> increment not yet in Postgres
--   KEYS[3]  eng:{s:N}:shareidem:<content_id>|<user_id>|<key>  STRING  the first answer to an
--            Idempotency-Key (or any key of the slot when ARGV[3] is empty: it is then not read)
-- ARGV:
--   ARGV[1]  content id
--   ARGV[2]  idempotency record TTL, seconds
--   ARGV[3]  request fingerprint ("" when the request has no Idempotency-Key)
--   ARGV[4]  share id of the row inserted (not yet committed) for this request
--   ARGV[5]  mode: add | undo (undo: the row's commit failed; take the count and the record back)
-- Returns {status, share_id, shares}:
--   status  "added" | "undone" | "replayed" (share_id and shares of the stored first answer) |
--           "conflict" (the key was used for a different request)

local live_key, delta_key, idem_key = KEYS[1], KEYS[2], KEYS[3]
local content_id, idem_ttl_seconds, fingerprint = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local share_id, mode = ARGV[4], ARGV[5]
local count_field = 'shares:' .. content_id

if mode == 'undo' then
  redis.call('HINCRBY', live_key, count_field, -1)
  redis.call('HINCRBY', delta_key, count_field, -1)
  if fingerprint ~= '' then
    local stored = redis.call('GET', idem_key)
    if stored and string.match(stored, '\n(%d+) %-?%d+$') == share_id then
      redis.call('DEL', idem_key)
    end
  end
  return {'undone', share_id, tonumber(redis.call('HGET', live_key, count_field) or '0')}
end

if fingerprint ~= '' then
  local stored = redis.call('GET', idem_key)
  if stored then
    local first, stored_id, shares = string.match(stored, '^(.-)\n(%d+) (-?%d+)$')
    local status = (first == fingerprint) and 'replayed' or 'conflict'
    return {status, stored_id, tonumber(shares)}
  end
end

redis.call('HINCRBY', delta_key, count_field, 1)
local shares = redis.call('HINCRBY', live_key, count_field, 1)
if fingerprint ~= '' then
  redis.call('SET', idem_key, string.format('%s\n%s %d', fingerprint, share_id, shares), 'EX', idem_ttl_seconds)
end
return {'added', share_id, shares}
