#!lua flags=no-writes
-- read_daily: the views and watch seconds of one item that Redis holds pending, per UTC day, for the
-- daily stats (daemon/daily.py): what the flusher has not written to content_daily yet.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:vdelta    LIST    applied view drains not yet captured (lib/entries.lua)
--   KEYS[2]  eng:{s:N}:vbatch    LIST    the captured ones
--   KEYS[3]  eng:{s:N}:batch_id  STRING  id of the captured batch
--   KEYS[4]  eng:{s:N}:delta     HASH    "dv:<yyyymmdd>:<content_id>" / "dw:…" -> views / watch seconds
--   KEYS[5]  eng:{s:N}:batch     HASH    the captured ones
-- ARGV:
--   ARGV[1]  the content id
-- Returns {batch id or "", {day, views, watch, ...} not captured, {day, views, watch, ...} captured}; a
-- drain entry written before daily counts has the day "".

-- @include entries

local item = ARGV[1]

local function collect(list_key, hash_key)
  local by_day = {}
  local function add(day, views, watch)
    local entry = by_day[day]
    if not entry then
      entry = {0, 0}
      by_day[day] = entry
    end
    entry[1] = entry[1] + views
    entry[2] = entry[2] + watch
  end
  for _, raw in ipairs(redis.call('LRANGE', list_key, 0, -1)) do
    local day, views, watch = entries.unpack(raw)
    if views[item] or watch[item] then
      add(day or '', views[item] or 0, watch[item] or 0)
    end
  end
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', hash_key, cursor, 'MATCH', 'd[vw]:*:' .. item, 'COUNT', 1000)
    cursor = page[1]
    local fields = page[2]
    for i = 1, #fields, 2 do
      local kind, day, rest = string.match(fields[i], '^d([vw]):(%d+):(.*)$')
      if rest == item then
        local n = tonumber(fields[i + 1])
        add(day, kind == 'v' and n or 0, kind == 'w' and n or 0)
      end
    end
  until cursor == '0'
  local out = {}
  for day, entry in pairs(by_day) do
    out[#out + 1] = day
    out[#out + 1] = entry[1]
    out[#out + 1] = entry[2]
  end
  return out
end

return {redis.call('GET', KEYS[3]) or '', collect(KEYS[1], KEYS[4]), collect(KEYS[2], KEYS[5])}
