-- 0006: watch history written by the flusher, history clears, playlists with a dense order.

-- Most recently watched first, with a tie-break on content_id: the keyset of GET /users/me/history.
DROP INDEX watch_history_recent;
CREATE INDEX watch_history_recent ON watch_history (user_id, last_watched_at DESC, content_id DESC);

-- When a user last cleared their history (DELETE /users/me/history, or a GDPR purge). Heartbeats
-- acknowledged before the clear may still wait in Redis or in a batch a flusher has already read: the
-- flusher writes no row whose last_watched_at is not after the user's cleared_at. The flusher takes
-- SHARE on this table before it reads it; a clear inserts here first (ROW EXCLUSIVE), so the two
-- never interleave. Rows are pruned after ENGAGEMENT_FLUSH_LEDGER_RETENTION_DAYS.
CREATE TABLE watch_history_clears (
    user_id    text PRIMARY KEY,
    cleared_at timestamptz NOT NULL
);
CREATE INDEX watch_history_clears_at ON watch_history_clears (cleared_at);

ALTER TABLE playlists ADD COLUMN description text NOT NULL DEFAULT '';
DROP INDEX playlists_user;
CREATE INDEX playlists_user ON playlists (user_id, playlist_id DESC);

-- Positions are dense from 0: checked at commit, so one UPDATE may shift a range of them.
ALTER TABLE playlist_items
    ADD CONSTRAINT playlist_items_position_unique UNIQUE (playlist_id, position) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT playlist_items_position_check CHECK (position >= 0);
DROP INDEX playlist_items_order;

-- Idempotency-Key records of the playlist POSTs (Postgres-only endpoints): the first answer per
-- (user, key), kept ENGAGEMENT_IDEMPOTENCY_TTL_S.
CREATE TABLE playlist_idempotency (
    user_id     text NOT NULL,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    status      smallint NOT NULL,
    answer      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX playlist_idempotency_created ON playlist_idempotency (created_at);
