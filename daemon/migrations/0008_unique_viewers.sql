-- 0008: unique viewers (HyperLogLog estimates, standard error 0.81%), written by the flusher.

-- Distinct user ids that viewed an item on one UTC day: the current PFCOUNT of its daily HLL
-- (eng:{s:N}:uvd:<yyyymmdd>:<content_id>), rewritten (never added to) whenever that HLL changed.
CREATE TABLE content_unique_viewers_daily (
    content_id     text   NOT NULL,
    day            date   NOT NULL,
    unique_viewers bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (content_id, day)
);
CREATE INDEX content_unique_viewers_daily_day ON content_unique_viewers_daily (day);

-- Distinct user ids that ever viewed an item: the PFCOUNT of its all-time HLL (eng:{s:N}:uv:<id>).
CREATE TABLE content_unique_viewers (
    content_id     text PRIMARY KEY,
    unique_viewers bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
