#!lua flags=allow-oom
-- prepare_rows: before a build of the shard's row filter (daemon/store/rows.py), give the filter the size
-- to build and mark it incomplete, so that scripts stop trusting it and set their keys' bits in it.
--
-- The bits of a filter of the same size are kept (bits are only ever added); a filter of another size
-- is dropped. A size of 0 drops the filter (disabled): every missing key is then loaded from Postgres.
-- Runs at maxmemory too (allow-oom): it frees or writes two bytes.
--
--   KEYS[1]  eng:{s:N}:rows  STRING  the row filter (lib/cold.lua): byte 0 log2 of its size in bits,
--                                    byte 1 "complete", then the bits
--   ARGV[1]  log2 of the size in bits to build (10 to 32), or 0 to drop the filter
-- Returns the log2 size the filter had before (0: none).

local log2 = tonumber(ARGV[1])
local before = redis.call('BITFIELD_RO', KEYS[1], 'GET', 'u8', 0)[1]
if log2 == 0 or before ~= log2 then
  redis.call('DEL', KEYS[1])
end
if log2 > 0 then
  redis.call('BITFIELD', KEYS[1], 'SET', 'u8', 0, log2, 'SET', 'u8', 8, 0)
end
return before
