-- lib/cold: cold keys, copies of what Postgres holds that Redis may expire or evict (docs/redis-memory.md).
-- Needs lib/records (include it first).
--
-- A missing cold key is unknown, never zero: a script that needs one answers cold.unknown(...) and
-- changes nothing; the caller reads the records from Postgres and calls again with a seed blob,
-- msgpack {k = {<key> = {<idle TTL seconds>, <value>, <token>}}}, value a string (SET) or a flat
-- array field, value, ... (HSET); an empty string: Postgres has nothing, the key stays absent.
--
-- The token closes the one race: a caller reads Postgres, another process loads the same key, changes
-- it, the flusher commits the change and gives the key its TTL, Redis evicts it, and only then the first
-- caller's stale seed arrives. cold.unknown() leaves a placeholder record "l:<key>" holding a token
-- (every caller that finds the key missing meanwhile gets the same one) and any seed of the key drops
-- it: a seed applies only while its token is still the placeholder's, that is while nobody seeded the
-- key since the caller found it missing, so the key stayed missing and Postgres could not change for
-- it (a flush needs the key present). Whoever changes Postgres outside a flush (reconcile) drops the
-- placeholders of what it changed. A placeholder lives LOAD_SECONDS at most.
-- A key with a change Postgres does not have yet carries no TTL: cold.pin() removes it and lists the
-- key in the shard's dirty set for the flusher.

local cold = {}
local LOAD_SECONDS = 60

-- Create the absent keys the seed blob names (clean: with their idle TTL), where the token still holds.
function cold.seed(blob, rec_key, recexp_key)
  if blob == nil or blob == '' then
    return
  end
  for key, seed in pairs(cmsgpack.unpack(blob).k) do
    local ttl_seconds, value, token = seed[1], seed[2], seed[3]
    local placeholder = 'l:' .. key
    if records.get(rec_key, recexp_key, placeholder) == token then
      records.drop(rec_key, recexp_key, placeholder)
      if value ~= '' and redis.call('EXISTS', key) == 0 then
        if type(value) == 'table' then
          redis.call('HSET', key, unpack(value))
        else
          redis.call('SET', key, value)
        end
        redis.call('EXPIRE', key, ttl_seconds)
      end
    end
  end
end

-- The absent keys among distinct `names`: one EXISTS per 1,000 names when none is absent.
function cold.absent(names)
  local found = {}
  local present = 0
  for i = 1, #names, 1000 do
    present = present + redis.call('EXISTS', unpack(names, i, math.min(i + 999, #names)))
  end
  if present == #names then
    return found
  end
  for _, name in ipairs(names) do
    if redis.call('EXISTS', name) == 0 then
      found[#found + 1] = name
    end
  end
  return found
end

-- Seed what the blob holds, then check `names`: nil when all are present, else the "unknown" answer
-- the script returns (changing nothing).
function cold.load(blob, rec_key, recexp_key, names)
  cold.seed(blob, rec_key, recexp_key)
  local missing = cold.absent(names)
  if #missing > 0 then
    return cold.unknown(rec_key, recexp_key, missing)
  end
  return nil
end

-- The answer of a call that met absent keys: {"unknown", key, token, ...}, each key's placeholder
-- record left (or the one already there kept) for its seed.
function cold.unknown(rec_key, recexp_key, missing)
  local answer = {'unknown'}
  for _, name in ipairs(missing) do
    local placeholder = 'l:' .. name
    local token = records.get(rec_key, recexp_key, placeholder)
    if not token then
      token = tostring(redis.call('HINCRBY', rec_key, 'l#', 1))
      records.put(rec_key, recexp_key, placeholder, token, LOAD_SECONDS)
    end
    answer[#answer + 1] = name
    answer[#answer + 1] = token
  end
  return answer
end

-- Seeds read from Postgres before a change made outside a flush are refused: drop the placeholders.
function cold.forget_loads(rec_key, recexp_key, names)
  for _, name in ipairs(names) do
    records.drop(rec_key, recexp_key, 'l:' .. name)
  end
end

-- Changed keys: no TTL until the flusher has their changes (finish_batch gives it back).
function cold.pin(names, dirty_key)
  for _, name in ipairs(names) do
    redis.call('PERSIST', name)
  end
  for i = 1, #names, 1000 do
    redis.call('SADD', dirty_key, unpack(names, i, math.min(i + 999, #names)))
  end
end
