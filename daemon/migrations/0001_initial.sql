-- 0001: the whole schema the seed lists, the counter table and the flush ledger.

-- Aggregated counts per content item; written only by the flusher (COPY + one upsert per batch).
CREATE TABLE content_counters (
    content_id    text PRIMARY KEY,
    views         bigint NOT NULL DEFAULT 0,
    likes         bigint NOT NULL DEFAULT 0,
    dislikes      bigint NOT NULL DEFAULT 0,
    comments      bigint NOT NULL DEFAULT 0,
    shares        bigint NOT NULL DEFAULT 0,
    watch_seconds bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The exactly-once ledger: a batch id is inserted in the same transaction as its deltas.
CREATE TABLE flush_batches (
    batch_id   text PRIMARY KEY,
    shard      integer NOT NULL,
    items      integer NOT NULL,
    flushed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX flush_batches_flushed_at ON flush_batches (flushed_at);

-- Per-user like state: one row per (user, content); value 1 = like, -1 = dislike.
CREATE TABLE likes (
    user_id    text NOT NULL,
    content_id text NOT NULL,
    value      smallint NOT NULL CHECK (value IN (-1, 1)),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, content_id)
);
CREATE INDEX likes_content ON likes (content_id);

CREATE TABLE comments (
    comment_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    content_id        text NOT NULL,
    user_id           text NOT NULL,
    parent_comment_id bigint REFERENCES comments (comment_id),
    body              text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    soft_delete_flag  boolean NOT NULL DEFAULT false,
    reply_count       integer NOT NULL DEFAULT 0
);
CREATE INDEX comments_thread ON comments (content_id, parent_comment_id, created_at DESC, comment_id DESC);
CREATE INDEX comments_user ON comments (user_id);

CREATE TABLE shares (
    share_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    content_id text NOT NULL,
    user_id    text NOT NULL,
    platform   text NOT NULL,
    external   boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shares_content ON shares (content_id);
CREATE INDEX shares_user ON shares (user_id);

CREATE TABLE watch_history (
    user_id          text NOT NULL,
    content_id       text NOT NULL,
    last_watched_at  timestamptz NOT NULL DEFAULT now(),
    progress_pct     real NOT NULL DEFAULT 0 CHECK (progress_pct BETWEEN 0 AND 100),
    position_seconds integer NOT NULL DEFAULT 0 CHECK (position_seconds >= 0),
    PRIMARY KEY (user_id, content_id)
);
CREATE INDEX watch_history_recent ON watch_history (user_id, last_watched_at DESC);

CREATE TABLE playlists (
    playlist_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX playlists_user ON playlists (user_id);

-- Items keep their order: position is dense from 0 within a playlist.
CREATE TABLE playlist_items (
    playlist_id bigint NOT NULL REFERENCES playlists (playlist_id) ON DELETE CASCADE,
    content_id  text NOT NULL,
    position    integer NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (playlist_id, content_id)
);
CREATE INDEX playlist_items_order ON playlist_items (playlist_id, position);

CREATE TABLE creator_subscriptions (
    user_id    text NOT NULL,
    creator_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, creator_id)
);
CREATE INDEX creator_subscriptions_creator ON creator_subscriptions (creator_id);
