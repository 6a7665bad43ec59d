-- 0003: playback signal counters and the content registry.

-- Playback signals (event_type media_completed / media_skipped / media_replay), counted apart from views.
ALTER TABLE content_counters
    ADD COLUMN completions bigint NOT NULL DEFAULT 0,
    ADD COLUMN skips       bigint NOT NULL DEFAULT 0,
    ADD COLUMN replays     bigint NOT NULL DEFAULT 0;

-- Who owns a content item and what it is (PUT /internal/v1/content/{contentId}); cached in Redis
-- (eng:{s:N}:registry) so that enriching an event never queries Postgres.
CREATE TABLE content_registry (
    content_id   text PRIMARY KEY,
    creator_id   text NOT NULL,
    content_type text NOT NULL CHECK (content_type IN ('VIDEO', 'AUDIO')),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX content_registry_creator ON content_registry (creator_id);
