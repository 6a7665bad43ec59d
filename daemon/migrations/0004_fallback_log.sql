-- 0004: likes, dislikes and subscriptions written straight to Postgres while Redis is unreachable.

-- One row per request the api answered from Postgres. While a row is unreconciled, the flusher does not
-- write the pair's state from Redis (anything Redis still holds for it predates the outage), and
-- `engagementd reconcile` settles the pair: drops its pending Redis state, recomputes the target's
-- counts from the records, then marks the row reconciled.
CREATE TABLE fallback_log (
    id         bigserial PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('like', 'subscription')),
    user_id    text NOT NULL,
    target_id  text NOT NULL,
    value      smallint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    reconciled boolean NOT NULL DEFAULT false
);
CREATE INDEX fallback_log_unreconciled ON fallback_log (kind, target_id, user_id) WHERE NOT reconciled;

-- Idempotency-Key records of the requests answered from Postgres (Redis holds the others).
CREATE TABLE fallback_idempotency (
    user_id     text NOT NULL,
    target_id   text NOT NULL,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    answer      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, target_id, key)
);
CREATE INDEX fallback_idempotency_created ON fallback_idempotency (created_at);
