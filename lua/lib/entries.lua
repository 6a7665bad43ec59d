-- lib/entries: one entry of a view drains list (vdelta, vbatch), as apply_views.lua writes it: the drain's
-- UTC day (yyyymmdd, a msgpack string) then its views, watch seconds and playback signals (three msgpack
-- maps). An entry written before daily counts has no day: the three maps alone.

local entries = {}

-- day (or false), views, watch, signals of one entry.
function entries.unpack(entry)
  local first, a, b, c = cmsgpack.unpack(entry)
  if type(first) == 'string' then
    return first, a, b, c
  end
  return false, first, a, b
end
