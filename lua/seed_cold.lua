#!lua
-- seed_cold: create missing cold keys from what a reader found in Postgres (lib/cold.lua), so that the
-- next read is served by Redis. Refused at maxmemory (no allow-oom): the reader keeps its answer.
--
-- Key layout (hash tag {s:N}, one slot):
--   KEYS[1]  eng:{s:N}:rec     HASH  records: "l:<key>" -> load tokens (read_counts.lua left them)
--   KEYS[2]  eng:{s:N}:recexp  ZSET  record -> expiry (ms)
--   and the keys the seeds name (same hash tag)
--   derived, same hash tag: eng:{s:N}:rows  STRING  the row filter: keys new to Postgres (lib/cold.lua)
-- ARGV:
--   ARGV[1]  seeds (lib/cold.lua): msgpack {k = {key = {idle TTL seconds, value, token}}}
-- Returns 1.

-- @include records
-- @include cold

cold.seed(ARGV[1], KEYS[1], KEYS[2])
return 1
