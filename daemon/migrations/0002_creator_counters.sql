-- 0002: per-creator totals, written only by the flusher (like content_counters).

CREATE TABLE creator_counters (
    creator_id  text PRIMARY KEY,
    subscribers bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
