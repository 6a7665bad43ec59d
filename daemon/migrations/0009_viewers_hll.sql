-- 0009: the unique viewers HyperLogLogs themselves, so that Redis may forget them (docs/redis-memory.md).
--
-- The flusher writes each changed HLL's bytes (Redis's own encoding) with its PFCOUNT. When Redis no
-- longer holds an HLL that Postgres has, the next view loads these bytes back before adding to it, so
-- the union of every viewer is kept however often Redis evicts it. Rows written before this migration
-- have none (NULL): their HLL starts again from the next view, and GREATEST keeps the larger count.
ALTER TABLE content_unique_viewers ADD COLUMN hll bytea;
ALTER TABLE content_unique_viewers_daily ADD COLUMN hll bytea;
