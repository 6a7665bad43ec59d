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
--
-- The row filter spares the Postgres read for a key Postgres has never had a row for (a first like, a
-- new item): eng:{s:N}:rows, a Bloom filter of the shard's counts, creator counts, like states and
-- subscriptions that Postgres may hold (docs/redis-memory.md, "The row filter"). Byte 0 of the bitmap is
-- log2 of its size m in bits, byte 1 is 1 once it is complete (built from Postgres by
-- daemon/store/rows.py); then m / 512 blocks of 64 bytes. A key's name hashes (SHA-1, words w0, w1,
-- w2 big-endian) to one block (w0 mod m / 512) and five bits in it (9 bits each of w1, then of w2):
-- one GETRANGE reads them all. Every key created in Redis (seeded or new) sets its bits first, and a row reaches Postgres
-- only by a flush of a key Redis holds, so a complete filter without a key's bits proves Postgres has
-- no row for it: the key is created empty, at once. The filter carries no TTL: eviction never touches it.

local cold = {}
local LOAD_SECONDS = 60
local ROWS_HEADER = 16  -- bits before the filter's own: log2 of its size, then "complete"
local ROWS_KINDS = {c = true, cr = true, lk = true, sb = true}
local EMPTY = {c = {'views', '0'}, cr = {'subscribers', '0'}, lk = '0', sb = '0'}

-- 'eng:{s:N}:rec' (or any key of the shard's bookkeeping) -> 'eng:{s:N}:rows'
function cold.rows_key(shard_key)
  return string.match(shard_key, '^(.-}:)') .. 'rows'
end

-- The kind of a cold key: 'eng:{s:3}:lk:c1|u1' -> 'lk'.
local function kind_of(name)
  return string.match(name, '}:(%a+):')
end

local filters = {}  -- rows key -> {blocks = number of 512-bit blocks or nil, complete = bool}, per call

-- Every call starts with no filter read (a function library outlives its calls; lua/__init__.py).
function cold.begin()
  filters = {}
end

local function filter_of(rows_key)
  local filter = filters[rows_key]
  if filter == nil then
    local header = redis.call('GETRANGE', rows_key, 0, 1)
    local log2, complete = string.byte(header, 1, 2)
    filter = {blocks = (log2 and log2 > 0) and 2 ^ (log2 - 9) or nil}
    filter.complete = filter.blocks ~= nil and complete == 1
    filters[rows_key] = filter
  end
  return filter
end

-- A key's place in the filter: its block (byte offset, the 64 bytes Redis holds there) and the five
-- bit positions in it (0..511), from the SHA-1 words w0 (the block) and w1, w2 (9 bits each).
local function probe(filter, rows_key, name)
  local hex = redis.sha1hex(name)
  local w0 = tonumber(string.sub(hex, 1, 8), 16)
  local w1 = tonumber(string.sub(hex, 9, 16), 16)
  local w2 = tonumber(string.sub(hex, 17, 24), 16)
  local offset = ROWS_HEADER / 8 + (w0 % filter.blocks) * 64
  local bits = {
    w1 % 512, math.floor(w1 / 512) % 512, math.floor(w1 / 262144) % 512,
    w2 % 512, math.floor(w2 / 512) % 512,
  }
  return {offset = offset, block = redis.call('GETRANGE', rows_key, offset, offset + 63), bits = bits}
end

local function is_set(block, bit)
  local byte = string.byte(block, math.floor(bit / 8) + 1) or 0
  return math.floor(byte / 2 ^ (7 - bit % 8)) % 2 == 1
end

-- Whether every bit of the probe is set.
local function present(p)
  for _, bit in ipairs(p.bits) do
    if not is_set(p.block, bit) then
      return false
    end
  end
  return true
end

-- Set the probe's bits: one SETRANGE of its block, rebuilt around the (at most five) bytes that change.
local function mark(rows_key, p)
  local block = p.block
  if #block < 64 then
    block = block .. string.rep('\0', 64 - #block)
  end
  local changed = false
  for _, bit in ipairs(p.bits) do
    -- tested on the block being built: two of the five positions may be the same bit
    local i = math.floor(bit / 8) + 1
    local byte = string.byte(block, i)
    local value = 2 ^ (7 - bit % 8)
    if math.floor(byte / value) % 2 == 0 then
      block = string.sub(block, 1, i - 1) .. string.char(byte + value) .. string.sub(block, i + 1)
      changed = true
    end
  end
  if changed then
    p.block = block
    redis.call('SETRANGE', rows_key, p.offset, block)
  end
end

-- The probe of `name` when a complete row filter proves that Postgres has no row for it (it lacks one
-- of its bits), else nil.
local function new_probe(rows_key, name)
  local filter = filter_of(rows_key)
  if not (filter.complete and ROWS_KINDS[kind_of(name)]) then
    return nil
  end
  local p = probe(filter, rows_key, name)
  if present(p) then
    return nil
  end
  return p
end

-- Whether the row filter proves that Postgres has no row for `name` (readers: nothing is set).
function cold.is_new(rows_key, name)
  return new_probe(rows_key, name) ~= nil
end

-- Set the row filter's bits of keys about to exist in Redis (any filter with a size: one being built
-- too, so that it is complete when it says so).
function cold.remember(rows_key, names)
  local filter = filter_of(rows_key)
  if filter.blocks == nil then
    return
  end
  for _, name in ipairs(names) do
    if ROWS_KINDS[kind_of(name)] then
      mark(rows_key, probe(filter, rows_key, name))
    end
  end
end

-- The value a new key starts from: what a seed of "Postgres has no row" would hold.
function cold.empty(name)
  return EMPTY[kind_of(name)]
end

-- Create the new keys `names` (their filter bits already set) empty, pinned: without a TTL and listed in the shard's dirty
-- set (as cold.pin leaves a changed key; the call changes most keys it creates), so the next flush gives
-- them their idle TTL.
local function create(rows_key, names)
  for _, name in ipairs(names) do
    local value = EMPTY[kind_of(name)]
    if type(value) == 'table' then
      redis.call('HSET', name, unpack(value))
    else
      redis.call('SET', name, value)
    end
  end
  local dirty_key = string.match(rows_key, '^(.-}:)') .. 'dirty'
  for i = 1, #names, 1000 do
    redis.call('SADD', dirty_key, unpack(names, i, math.min(i + 999, #names)))
  end
end

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
        cold.remember(cold.rows_key(rec_key), {key})
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

-- The absent keys among distinct `names`: one EXISTS per 100 names when none or all of them are absent,
-- else one per name until the absent ones the count implies are found (the last one inferred).
function cold.absent(names)
  local found = {}
  for i = 1, #names, 100 do
    local last = math.min(i + 99, #names)
    local present = redis.call('EXISTS', unpack(names, i, last))
    local missing = last - i + 1 - present
    if present == 0 then
      for j = i, last do
        found[#found + 1] = names[j]
      end
    elseif missing > 0 then
      for j = i, last do
        if j == last or redis.call('EXISTS', names[j]) == 0 then
          found[#found + 1] = names[j]
          missing = missing - 1
          if missing == 0 then
            break
          end
        end
      end
    end
  end
  return found
end

-- The members of `names` that the set `set_key` holds, as a set (SMISMEMBER, 1,000 at a time).
function cold.members(set_key, names)
  local held = {}
  for i = 1, #names, 1000 do
    local last = math.min(i + 999, #names)
    local member = redis.call('SMISMEMBER', set_key, unpack(names, i, last))
    for j = i, last do
      if member[j - i + 1] == 1 then
        held[names[j]] = true
      end
    end
  end
  return held
end

-- The members of `names` that the set `set_key` does not hold, in order.
function cold.not_in(set_key, names)
  local held, out = cold.members(set_key, names), {}
  for _, name in ipairs(names) do
    if not held[name] then
      out[#out + 1] = name
    end
  end
  return out
end

-- The absent keys among `names` that the row filter does not prove new; those it does are created
-- empty at once (pinned: listed in the dirty set), and returned second; those of them `deferred` (a set)
-- names are neither created nor marked in the filter: returned third, a set name -> its probe (see
-- cold.load).
function cold.settle(rec_key, names, deferred)
  local rows_key = cold.rows_key(rec_key)
  local unknown, new, later = {}, {}, {}
  for _, name in ipairs(cold.absent(names)) do
    local p = new_probe(rows_key, name)
    if p and deferred and deferred[name] then
      later[name] = p
    elseif p then
      mark(rows_key, p)
      new[#new + 1] = name
    else
      unknown[#unknown + 1] = name
    end
  end
  if #new > 0 then
    create(rows_key, new)
  end
  return unknown, new, later
end

-- Seed what the blob holds, create the keys of `names` known to be new, then check the rest: nil when
-- all are present, else the "unknown" answer the script returns (having changed nothing but creating
-- those keys as a seed would). The keys of the set `deferred` that are known to be new are not created
-- (an unlike of a pair Postgres never had creates nothing): returned second, name -> probe, for the
-- script to pass to cold.put if it writes one.
function cold.load(blob, rec_key, recexp_key, names, deferred)
  cold.seed(blob, rec_key, recexp_key)
  local missing, _, later = cold.settle(rec_key, names, deferred)
  if #missing > 0 then
    return cold.unknown(rec_key, recexp_key, missing), later
  end
  return nil, later
end

-- SET the string key `name` to `value` and pin it with the present keys `also` (cold.pin). `probe`: its
-- probe when cold.load deferred it as new (the filter's bits are set first: the key is about to exist),
-- nil when it is present.
function cold.put(rec_key, dirty_key, name, value, probe, also)
  if probe then
    mark(cold.rows_key(rec_key), probe)
    redis.call('SET', name, value)
    cold.pin(also, dirty_key, {name})
  else
    redis.call('SET', name, value)
    cold.pin({name, unpack(also)}, dirty_key)
  end
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

-- Changed keys: no TTL until the flusher has their changes (finish_batch gives it back). A key the
-- dirty set already lists has none (only finish_batch gives one back, to keys it does not list).
-- `created`: keys the call created itself (cold.put), without a TTL and not listed (a key the dirty set
-- lists is present): listed without a check.
function cold.pin(names, dirty_key, created)
  cold.persist(cold.not_in(dirty_key, names), dirty_key, created)
end

-- cold.pin of keys known to be present and not listed in the dirty set (and of `created`, listed only).
function cold.persist(fresh, dirty_key, created)
  for _, name in ipairs(fresh) do
    redis.call('PERSIST', name)
  end
  for _, name in ipairs(created or {}) do
    fresh[#fresh + 1] = name
  end
  for i = 1, #fresh, 1000 do
    redis.call('SADD', dirty_key, unpack(fresh, i, math.min(i + 999, #fresh)))
  end
end
