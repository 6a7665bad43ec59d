#!lua
-- merge_rows: add the bits a build of the shard's row filter computed (from every cold key Redis held
-- and every row Postgres has, daemon/store/rows.py) and mark the filter complete: from then on a key
-- without its bits is known to be new to Postgres (lib/cold.lua).
--
-- Refused at maxmemory (no allow-oom): the build is tried again later, the filter stays incomplete.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:rows        STRING  the row filter (prepare_rows.lua gave it its size)
--   KEYS[2]  eng:{s:N}:rows:build  STRING  scratch copy of the built bits, deleted before returning
-- ARGV:
--   ARGV[1]  log2 of the size in bits the build was made for
--   ARGV[2]  the built filter: 2 + 2^ARGV[1] / 8 bytes, the first two zero
-- Returns 1 when merged and marked complete, 0 when the filter no longer has that size (another
-- build changed it: this one is void).

local log2 = tonumber(ARGV[1])
if redis.call('BITFIELD_RO', KEYS[1], 'GET', 'u8', 0)[1] ~= log2 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('BITOP', 'OR', KEYS[1], KEYS[1], KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('BITFIELD', KEYS[1], 'SET', 'u8', 8, 1)
return 1
