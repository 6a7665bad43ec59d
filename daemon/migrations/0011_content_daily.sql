-- 0011: daily views and watch seconds per item (GET /api/v1/content/{id}/stats/daily). The flusher adds
-- each drain's counts to the row of the drain's UTC day (the day its buffer was cut, as for daily unique
-- viewers) in the same transaction as content_counters, exactly once through the flush ledger.
CREATE TABLE content_daily (
    content_id    text NOT NULL,
    day           date NOT NULL,
    views         bigint NOT NULL DEFAULT 0,
    watch_seconds bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (content_id, day)
);
