-- 0005: comments and replies (api/comments.py) and the GDPR purge (daemon/purge.py).

-- A purged comment keeps its place in its thread but loses its author and body (daemon/purge.py).
ALTER TABLE comments
    ALTER COLUMN user_id DROP NOT NULL,
    ALTER COLUMN body DROP NOT NULL,
    -- Whether this row's +1 is in the Redis comment count: a live comment should be counted, a deleted
    -- one not. A row where the two disagree (counted = soft_delete_flag) has a count change still to
    -- apply; daemon/comment_counts.py applies it once (a Redis marker per change) and flips the flag.
    ADD COLUMN counted boolean NOT NULL DEFAULT false;
-- Top-level comments newest first (the listing's keyset): comments_thread cannot give that order, since
-- "parent_comment_id IS NULL" does not fix its second column the way an equality does.
CREATE INDEX comments_top ON comments (content_id, created_at DESC, comment_id DESC)
    WHERE parent_comment_id IS NULL;
CREATE INDEX comments_count_pending ON comments (comment_id) WHERE counted = soft_delete_flag;

-- Idempotency-Key records of comment posts, written in the same transaction as the comment row, so that
-- a retry is answered exactly once whether Redis is up or not. Pruned by reconcile after
-- ENGAGEMENT_IDEMPOTENCY_TTL_S.
CREATE TABLE comment_idempotency (
    user_id     text NOT NULL,
    content_id  text NOT NULL,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    comment_id  bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, content_id, key)
);
CREATE INDEX comment_idempotency_created ON comment_idempotency (created_at);
