-- 0010: the lists of the read side, newest first with a keyset cursor (daemon/lists.py): a user's
-- likes and subscriptions, a creator's subscribers.
CREATE INDEX likes_user_created ON likes (user_id, created_at DESC, content_id DESC);
CREATE INDEX creator_subscriptions_user_created
    ON creator_subscriptions (user_id, created_at DESC, creator_id DESC);
CREATE INDEX creator_subscriptions_creator_created
    ON creator_subscriptions (creator_id, created_at DESC, user_id DESC);
