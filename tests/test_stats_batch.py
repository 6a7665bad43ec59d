"""POST /api/v1/stats/batch, and the watch and playback fields of every stats answer: exact values after
known writes, from Redis, from Postgres for the items Redis no longer holds, and with Redis stopped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from service_fixtures import ApiProcess, run_flusher_once, token, wait_until

from daemon import keys
from daemon.proc.servers import RedisServer
from daemon.settings import Settings

BATCH = "/api/v1/stats/batch"
ZERO = {
    "views": 0,
    "likes": 0,
    "dislikes": 0,
    "comments": 0,
    "shares": 0,
    "watch_seconds": 0,
    "completions": 0,
    "skips": 0,
    "replays": 0,
    "unique_viewers": 0,
    "unique_viewers_today": 0,
}


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _post(api: ApiProcess, path: str, user: str, body: dict[str, Any] | None = None) -> httpx.Response:
    r = (
        api.client.post(path, headers=_auth(user), json=body)
        if body
        else api.client.post(path, headers=_auth(user))
    )
    assert r.status_code in (200, 201, 202), r.text
    return r


def _batch(api: ApiProcess, ids: list[str], user: str | None = None) -> list[dict[str, Any]]:
    r = api.client.post(BATCH, json={"content_ids": ids}, headers=_auth(user) if user else {})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _writes(api: ApiProcess) -> None:
    """sb-a: 3 views by u1, u2, u3 (10 s each), 1 completion (5 s), 2 replays, liked by u1, one share;
    sb-b: 1 anonymous view of 30 s, 1 skip, disliked by u2."""
    for user in ("u1", "u2", "u3"):
        _post(api, "/api/v1/content/sb-a/views", user, {"watch_seconds": 10})
    _post(api, "/api/v1/content/sb-a/views", "u1", {"event_type": "media_completed", "watch_seconds": 5})
    for _ in range(2):
        _post(api, "/api/v1/content/sb-a/views", "u1", {"event_type": "media_replay"})
    assert api.client.post("/api/v1/content/sb-b/views", json={"watch_seconds": 30}).status_code == 202
    _post(api, "/api/v1/content/sb-b/views", "u3", {"event_type": "media_skipped"})
    _post(api, "/api/v1/content/sb-a/like", "u1")
    _post(api, "/api/v1/content/sb-b/dislike", "u2")
    _post(api, "/api/v1/content/sb-a/shares", "u1", {"platform": "whatsapp"})


EXPECTED_A = {
    **ZERO,
    "content_id": "sb-a",
    "views": 3,
    "likes": 1,
    "shares": 1,
    "watch_seconds": 35,
    "completions": 1,
    "replays": 2,
    "unique_viewers": 3,
    "unique_viewers_today": 3,
}
EXPECTED_B = {**ZERO, "content_id": "sb-b", "views": 1, "dislikes": 1, "watch_seconds": 30, "skips": 1}


def _expected(viewer: str | None) -> list[dict[str, Any]]:
    a, b, never = dict(EXPECTED_A), dict(EXPECTED_B), {**ZERO, "content_id": "sb-never"}
    if viewer == "u1":
        a["viewer_state"], b["viewer_state"], never["viewer_state"] = "liked", "none", "none"
    return [a, b, never, a]


def test_a_batch_answers_each_item_as_the_single_read_from_redis_postgres_or_both(
    migrated: Settings, start_api: Callable[..., ApiProcess], redis_back: RedisServer
) -> None:
    settings = migrated.replace(buffer_flush_interval_ms=20, unique_viewers_day="2026-12-07")
    api = start_api(settings)
    _writes(api)
    wait_until(lambda: _batch(api, ["sb-a", "sb-b"]) == _expected(None)[:2], 10, "the views to reach Redis")

    # Then in request order, repeats included, unknown items as zeros, with the viewer's states
    assert _batch(api, ["sb-a", "sb-b", "sb-never", "sb-a"], "u1") == _expected("u1")
    assert _batch(api, ["sb-a", "sb-b", "sb-never", "sb-a"]) == _expected(None)
    # and each item exactly as the single read answers it
    for item in _expected("u1")[:3]:
        single = api.client.get(f"/api/v1/content/{item['content_id']}/stats", headers=_auth("u1"))
        assert single.json() == item

    # When everything is flushed and Redis no longer holds sb-b's counts nor u1's state on sb-a
    run_flusher_once(settings)
    shards = settings.shards
    with redis.Redis.from_url(settings.redis_url) as client:
        gone = [
            keys.counts_key(keys.shard_of("sb-b", shards), "sb-b"),
            keys.like_key(keys.shard_of("sb-a", shards), "sb-a", "u1"),
        ]
        assert client.delete(*gone) == 2
        # Then the batch reads them from Postgres, exactly, and keeps them in Redis for the next read
        assert _batch(api, ["sb-a", "sb-b", "sb-never", "sb-a"], "u1") == _expected("u1")
        assert client.exists(*gone) == 2

    # When Redis stops: every item from Postgres, the same figures
    redis_back.stop()
    assert _batch(api, ["sb-a", "sb-b", "sb-never", "sb-a"], "u1") == _expected("u1")
    single = api.client.get("/api/v1/content/sb-b/stats")
    assert (single.headers["X-Counts-Source"], single.json()) == ("postgres", EXPECTED_B)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "malformed_body"),
        (b"[]", 422, "invalid_body"),
        (b'{"content_ids": ["a"], "more": 1}', 422, "unknown_field"),
        (b'{"content_ids": []}', 422, "invalid_content_ids"),
        (b'{"content_ids": "a"}', 422, "invalid_content_ids"),
        (b"{}", 422, "invalid_content_ids"),
        (b'{"ids": ["a"]}', 422, "unknown_field"),
        (b'{"content_ids": ["a", 7]}', 422, "invalid_content_id"),
        (b'{"content_ids": ["a", "b c"]}', 422, "invalid_content_id"),
        (b'{"content_ids": [' + b",".join([b'"x"'] * 101) + b"]}", 422, "too_many_content_ids"),
        (b'{"content_ids": ["' + b"x" * 20_000 + b'"]}', 413, "body_too_large"),
    ],
)
def test_bad_batches_get_a_specific_error(api: ApiProcess, body: bytes, status: int, code: str) -> None:
    r = api.client.post(BATCH, content=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    if code == "invalid_content_id":
        assert r.json()["index"] == 1
