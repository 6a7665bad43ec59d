"""Watch history over HTTP: heartbeats coalesced in Redis and flushed as one row per (user, item), resume
positions, the list with its cursor across flushed and unflushed entries, clearing, bad input, and
Redis being down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import httpx
import pytest
import redis
from service_fixtures import ApiProcess, run_flusher_once, token, wait_until

from daemon import keys
from daemon.proc.servers import RedisServer, free_port
from daemon.settings import Settings


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _beat(api: ApiProcess, user: str, item: str, pct: float, pos: int) -> httpx.Response:
    return api.client.put(
        f"/api/v1/users/me/history/{item}",
        json={"progress_pct": pct, "position_seconds": pos},
        headers=_auth(user),
    )


def _resume(api: ApiProcess, user: str, item: str) -> httpx.Response:
    return api.client.get(f"/api/v1/users/me/history/{item}", headers=_auth(user))


def _list(api: ApiProcess, user: str, **params: object) -> httpx.Response:
    return api.client.get("/api/v1/users/me/history", params=params, headers=_auth(user))


def _sql(database_url: str, query: str, *args: object) -> list[tuple]:
    async def fetch() -> list[tuple]:
        conn = await asyncpg.connect(database_url)
        try:
            return [tuple(r.values()) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _rows(database_url: str) -> dict[tuple[str, str], tuple[float, int]]:
    rows = _sql(database_url, "SELECT user_id, content_id, progress_pct, position_seconds FROM watch_history")
    return {(u, c): (round(p, 2), s) for u, c, p, s in rows}


def _row_writes(database_url: str) -> int:
    """Rows inserted or updated in watch_history since the database was created (pg_stat)."""
    [(n,)] = _sql(
        database_url,
        "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = 'watch_history'",
    )
    return n


def _all_pages(api: ApiProcess, user: str, limit: int) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        params: dict[str, object] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        r = _list(api, user, **params)
        assert r.status_code == 200, r.text
        pages.append([e["content_id"] for e in r.json()["items"]])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return pages


def test_many_heartbeats_become_one_row_with_the_last_values(api: ApiProcess, migrated: Settings) -> None:
    # Given 60 heartbeats of alice on one film, 5 on another, and 3 of bob on the first
    for i in range(60):
        assert _beat(api, "alice", "film-1", i * 1.5, i * 10).status_code == 200
    for i in range(5):
        assert _beat(api, "alice", "film-2", 20 + i, 300 + i).status_code == 200
    for i in range(3):
        assert _beat(api, "bob", "film-1", 1 + i, i).status_code == 200

    # Then the resume position is the last heartbeat, before any flush
    resume = _resume(api, "alice", "film-1")
    assert resume.status_code == 200
    body = resume.json()
    assert {k: body[k] for k in ("content_id", "progress_pct", "position_seconds")} == {
        "content_id": "film-1",
        "progress_pct": 88.5,
        "position_seconds": 590,
    }
    assert body["last_watched_at"].endswith("Z")
    assert _rows(migrated.database_url) == {}

    # When the flusher runs
    run_flusher_once(migrated)

    # Then Postgres holds one row per (user, item), with the last values, written once each
    assert _rows(migrated.database_url) == {
        ("alice", "film-1"): (88.5, 590),
        ("alice", "film-2"): (24.0, 304),
        ("bob", "film-1"): (3.0, 2),
    }
    wait_until(lambda: _row_writes(migrated.database_url) >= 3, what="pg_stat to count the flush")
    assert _row_writes(migrated.database_url) == 3, "one row write per (user, item), not per heartbeat"
    # And Redis keeps nothing it no longer needs; the resume position now comes from Postgres unchanged
    with redis.Redis.from_url(migrated.redis_url) as r:
        assert not list(r.scan_iter(match="eng:*:hist:*")) and not list(r.scan_iter(match="eng:*:hdelta"))
    assert _resume(api, "alice", "film-1").json() == body

    # When 20 more heartbeats arrive and the flusher runs twice
    for i in range(20):
        assert _beat(api, "alice", "film-1", 90 + i / 4, 600 + i).status_code == 200
    run_flusher_once(migrated)
    run_flusher_once(migrated)

    # Then that is one more row write
    assert _rows(migrated.database_url)[("alice", "film-1")] == (94.75, 619)
    wait_until(lambda: _row_writes(migrated.database_url) >= 4, what="pg_stat to count the flush")
    assert _row_writes(migrated.database_url) == 4


def test_the_list_is_most_recent_first_across_flushed_and_unflushed_entries(
    api: ApiProcess, migrated: Settings
) -> None:
    # Given seven items watched in order, four of them flushed, then item 1 watched again (unflushed)
    for i in range(4):
        assert _beat(api, "carol", f"item-{i}", 10, i).status_code == 200
    run_flusher_once(migrated)
    for i in range(4, 7):
        assert _beat(api, "carol", f"item-{i}", 10, i).status_code == 200
    assert _beat(api, "carol", "item-1", 55.5, 99).status_code == 200
    assert _beat(api, "dave", "item-9", 1, 1).status_code == 200  # someone else's

    # Then pages of three follow the most recent watch, each item once
    expected = [["item-1", "item-6", "item-5"], ["item-4", "item-3", "item-2"], ["item-0"]]
    assert _all_pages(api, "carol", 3) == expected
    first = _list(api, "carol", limit=1).json()["items"][0]
    assert (first["content_id"], first["progress_pct"], first["position_seconds"]) == ("item-1", 55.5, 99)
    assert _all_pages(api, "carol", 100) == [[item for page in expected for item in page]]

    # And after a flush the same pages come from Postgres alone
    run_flusher_once(migrated)
    assert _all_pages(api, "carol", 3) == expected
    assert _all_pages(api, "dave", 20) == [["item-9"]]
    assert _all_pages(api, "erin", 20) == [[]]


def test_clearing_the_history_removes_flushed_and_pending_entries(
    api: ApiProcess, migrated: Settings
) -> None:
    # Given flushed entries, pending ones, and another user's
    assert _beat(api, "frank", "a", 10, 1).status_code == 200
    assert _beat(api, "grace", "a", 20, 2).status_code == 200
    run_flusher_once(migrated)
    assert _beat(api, "frank", "b", 30, 3).status_code == 200
    assert _beat(api, "frank", "a", 40, 4).status_code == 200

    # When frank clears his history (twice: it is idempotent)
    for _ in range(2):
        r = api.client.delete("/api/v1/users/me/history", headers=_auth("frank"))
        assert (r.status_code, r.content) == (204, b"")

    # Then nothing of his is left, now or after the next flush; grace keeps hers
    assert _all_pages(api, "frank", 10) == [[]]
    assert _resume(api, "frank", "a").status_code == 404
    run_flusher_once(migrated)
    assert _rows(migrated.database_url) == {("grace", "a"): (20.0, 2)}
    assert _resume(api, "frank", "b").json()["error"] == "history_entry_not_found"

    # And a heartbeat after the clear is recorded as usual
    assert _beat(api, "frank", "b", 50, 5).status_code == 200
    run_flusher_once(migrated)
    assert _rows(migrated.database_url) == {("grace", "a"): (20.0, 2), ("frank", "b"): (50.0, 5)}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"progress_pct": 101, "position_seconds": 1}, 422, "invalid_progress_pct"),
        ({"progress_pct": -0.5, "position_seconds": 1}, 422, "invalid_progress_pct"),
        ({"progress_pct": "50", "position_seconds": 1}, 422, "invalid_progress_pct"),
        ({"progress_pct": True, "position_seconds": 1}, 422, "invalid_progress_pct"),
        ({"position_seconds": 1}, 422, "invalid_progress_pct"),
        ({"progress_pct": 50, "position_seconds": -1}, 422, "invalid_position_seconds"),
        ({"progress_pct": 50, "position_seconds": 1.5}, 422, "invalid_position_seconds"),
        ({"progress_pct": 50, "position_seconds": 2**31}, 422, "invalid_position_seconds"),
        ({"progress_pct": 50}, 422, "invalid_position_seconds"),
        ({"progress_pct": 50, "position_seconds": 1, "device": "tv"}, 422, "unknown_field"),
        ([50, 1], 422, "invalid_body"),
    ],
)
def test_bad_heartbeats_are_refused_with_a_specific_error(
    api: ApiProcess, body: object, status: int, code: str
) -> None:
    r = api.client.put("/api/v1/users/me/history/film-1", json=body, headers=_auth("alice"))
    assert (r.status_code, r.json()["error"]) == (status, code)
    assert _resume(api, "alice", "film-1").status_code == 404


def test_history_requests_without_a_valid_token_or_id_are_refused(api: ApiProcess) -> None:
    url = "/api/v1/users/me/history"
    not_json = api.client.put(f"{url}/film-1", content=b"{nope", headers=_auth("alice"))
    assert (not_json.status_code, not_json.json()["error"]) == (400, "malformed_body")
    bad_id = api.client.put(
        f"{url}/bad%20id", json={"progress_pct": 1, "position_seconds": 1}, headers=_auth("a")
    )
    assert (bad_id.status_code, bad_id.json()["error"]) == (422, "invalid_content_id")
    for method, path in (("PUT", f"{url}/film-1"), ("GET", f"{url}/film-1"), ("GET", url), ("DELETE", url)):
        r = api.client.request(method, path, json={"progress_pct": 1, "position_seconds": 1})
        assert (r.status_code, r.json()["error"]) == (401, "missing_token"), (method, path)
    assert _list(api, "alice", limit=0).json()["error"] == "invalid_limit"
    assert _list(api, "alice", limit=101).status_code == 422
    for cursor in ("garbage!", "WzEsMiwzXQ", "e30"):  # not base64 JSON, [1,2,3], {}
        r = _list(api, "alice", cursor=cursor)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_cursor"), cursor


def test_while_redis_is_down_heartbeats_go_to_postgres_and_clearing_is_refused(
    api: ApiProcess, migrated: Settings, redis_back: RedisServer
) -> None:
    # Given an entry pending in Redis, when Redis stops
    assert _beat(api, "heidi", "old", 10, 1).status_code == 200
    redis_back.stop()

    # Then heartbeats are written straight to Postgres and read back from there
    for i in range(3):
        assert _beat(api, "heidi", "film", 30 + i, 100 + i).status_code == 200
    assert _rows(migrated.database_url) == {("heidi", "film"): (32.0, 102)}
    assert _resume(api, "heidi", "film").json()["position_seconds"] == 102
    assert _all_pages(api, "heidi", 10) == [["film"]]
    metrics = api.client.get("/metrics").text
    assert 'engagement_fallback_writes_total{kind="history"} 3.0' in metrics

    # And a clear, which could not reach the pending heartbeat, is refused rather than half done
    r = api.client.delete("/api/v1/users/me/history", headers=_auth("heidi"))
    assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "unavailable", "1")

    # When Redis is back, the pending heartbeat is flushed next to the fallback one
    redis_back.start()
    run_flusher_once(migrated)
    assert _rows(migrated.database_url) == {("heidi", "film"): (32.0, 102), ("heidi", "old"): (10.0, 1)}
    assert _all_pages(api, "heidi", 10) == [["film", "old"]]


def test_history_keys_live_in_the_users_slot(migrated: Settings, api: ApiProcess) -> None:
    assert _beat(api, "ivan", "film", 5, 5).status_code == 200
    shard = keys.shard_of("ivan", migrated.shards)
    with redis.Redis.from_url(migrated.redis_url, decode_responses=True) as r:
        assert set(r.hgetall(keys.history_key(shard, "ivan"))) == {"film"}
        assert set(r.hgetall(keys.hdelta_key(shard))) == {"film|ivan"}


def test_while_postgres_is_down_heartbeats_are_kept_and_a_clear_changes_nothing(
    start_api: Callable[..., ApiProcess], migrated: Settings
) -> None:
    # Given an api whose Postgres is unreachable
    api = start_api(migrated.replace(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none"))

    # Then heartbeats are still acknowledged (Redis) and their resume positions served
    assert _beat(api, "judy", "film", 12.5, 40).status_code == 200
    assert _resume(api, "judy", "film").json()["position_seconds"] == 40
    # And what needs Postgres is a 503 with Retry-After
    for r in (_list(api, "judy"), _resume(api, "judy", "other")):
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "unavailable", "1")
    cleared = api.client.delete("/api/v1/users/me/history", headers=_auth("judy"))
    assert (cleared.status_code, cleared.json()["error"]) == (503, "unavailable")

    # And the refused clear removed nothing: the heartbeat reaches Postgres with the next flush
    assert _resume(api, "judy", "film").json()["position_seconds"] == 40
    run_flusher_once(migrated)
    assert _rows(migrated.database_url) == {("judy", "film"): (12.5, 40)}
