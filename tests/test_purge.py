"""GDPR purge (``DELETE /internal/v1/users/{userId}``, daemon/purge.py): every engagement record of one
user removed in Postgres and Redis, counts adjusted exactly (states still pending in Redis included),
other users untouched; a second run removes nothing; a purge interrupted midway ends exact when run again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import quote

import pytest
import redis
from service_fixtures import ApiProcess, cli_reconcile, fetch, run_flusher_once, token

from daemon import db, keys
from daemon.errors import PurgeIncomplete, is_unavailable
from daemon.metrics import Metrics
from daemon.proc.servers import RedisServer
from daemon.purge import purge_user
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from lua import Scripts

INTERNAL = {"Authorization": f"Bearer {token('gdpr-service', scope='internal')}"}
ITEMS = ("clip-a", "clip-b", "clip-c")
CREATORS = ("studio-1", "studio-2", "studio-3")


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _ok(response) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code in (200, 201), response.text
    return response.json()


def _comment(api: ApiProcess, item: str, user: str, text: str, parent: int | None = None) -> int:
    body: dict[str, object] = {"body": text}
    if parent is not None:
        body["parent_comment_id"] = parent
    return _ok(api.client.post(f"/api/v1/content/{item}/comments", json=body, headers=_auth(user)))[
        "comment_id"
    ]


def _given_two_users(api: ApiProcess, settings: Settings) -> dict[str, int]:
    """alice and bob with likes, dislikes, subscriptions, comments, shares, history and playlists, part
    flushed to Postgres and part still pending in Redis. Returns the comment ids."""
    c = api.client
    _ok(c.post("/api/v1/content/clip-a/like", headers=_auth("alice")))
    _ok(c.post("/api/v1/content/clip-b/dislike", headers=_auth("alice")))
    _ok(c.post("/api/v1/content/clip-a/like", headers=_auth("bob")))
    _ok(c.post("/api/v1/content/clip-b/like", headers=_auth("bob")))
    for creator in ("studio-1", "studio-2"):
        _ok(c.post(f"/api/v1/creators/{creator}/subscribe", headers=_auth("alice")))
    _ok(c.post("/api/v1/creators/studio-1/subscribe", headers=_auth("bob")))
    ids = {"a1": _comment(api, "clip-a", "alice", "alice on a")}
    ids["b1"] = _comment(api, "clip-a", "bob", "bob replies to alice", ids["a1"])
    ids["b2"] = _comment(api, "clip-a", "bob", "bob on a")
    ids["a2"] = _comment(api, "clip-a", "alice", "alice replies to bob", ids["b2"])
    ids["a3"] = _comment(api, "clip-b", "alice", "alice deletes this one")
    assert c.delete(f"/api/v1/content/clip-b/comments/{ids['a3']}", headers=_auth("alice")).status_code == 204
    ids["key"] = _ok(
        c.post(
            "/api/v1/content/clip-b/comments",
            json={"body": "keyed"},
            headers={**_auth("alice"), "Idempotency-Key": "k1"},
        )
    )["comment_id"]
    for user in ("alice", "bob"):
        _ok(c.post("/api/v1/content/clip-a/shares", json={"platform": "web"}, headers=_auth(user)))
    run_flusher_once(settings)
    # still pending in Redis when the purge comes
    _ok(c.post("/api/v1/content/clip-c/dislike", headers=_auth("alice")))
    _ok(c.post("/api/v1/content/clip-c/like", headers=_auth("bob")))
    _ok(c.post("/api/v1/creators/studio-3/subscribe", headers=_auth("alice")))
    _ok(c.post("/api/v1/creators/studio-2/subscribe", headers=_auth("bob")))
    for user in ("alice", "bob"):  # a heartbeat each, not flushed yet
        beat = {"progress_pct": 30, "position_seconds": 60}
        r = c.put("/api/v1/users/me/history/clip-d", json=beat, headers=_auth(user))
        assert r.status_code in (200, 204), r.text
    fetch(
        settings.database_url,
        "INSERT INTO watch_history (user_id, content_id, progress_pct) VALUES"
        " ('alice', 'clip-a', 50), ('alice', 'clip-b', 10), ('bob', 'clip-a', 70)",
    )
    fetch(
        settings.database_url,
        "WITH p AS (INSERT INTO playlists (user_id, name) VALUES ('alice', 'mine'), ('bob', 'his')"
        " RETURNING playlist_id) INSERT INTO playlist_items (playlist_id, content_id, position)"
        " SELECT playlist_id, 'clip-a', 0 FROM p",
    )
    return ids


EXPECTED_REMOVED = {
    "likes": 1,
    "dislikes": 2,
    "subscriptions": 3,
    "comments": 4,
    "shares": 1,
    "watch_history": 2,
    "playlists": 1,
    "idempotency_records": 1,
}


def _then_only_bob_is_left(api: ApiProcess, settings: Settings, ids: dict[str, int], source: str) -> None:
    c = api.client
    want = {"clip-a": (1, 0, 2, 2), "clip-b": (1, 0, 0, 0), "clip-c": (1, 0, 0, 0)}  # likes, dislikes, ...
    for item, (likes, dislikes, comments, shares) in want.items():
        r = c.get(f"/api/v1/content/{item}/stats", headers=_auth("alice"))
        body = r.json()
        assert r.headers["x-counts-source"] == source
        assert (body["likes"], body["dislikes"], body["comments"], body["shares"]) == (
            likes,
            dislikes,
            comments,
            shares,
        ), item
        assert body["viewer_state"] == "none"
    for creator, subscribers in zip(CREATORS, (1, 1, 0), strict=True):
        r = c.get(f"/api/v1/creators/{creator}", headers=_auth("alice"))
        assert (r.json()["subscribers"], r.json()["viewer_state"]) == (subscribers, "none"), creator
    # Threads keep their shape: alice's comments are anonymous tombstones, bob's reply stays attached
    top = c.get("/api/v1/content/clip-a/comments").json()["items"]
    assert [(x["comment_id"], x["user_id"], x["body"], x["reply_count"]) for x in top] == [
        (ids["b2"], "bob", "bob on a", 0),
        (ids["a1"], None, None, 1),
    ]
    thread = c.get("/api/v1/content/clip-a/comments", params={"parent_comment_id": ids["a1"]}).json()
    assert [(x["comment_id"], x["user_id"]) for x in thread["items"]] == [(ids["b1"], "bob")]


def _then_postgres_holds_only_bob(settings: Settings) -> None:
    url = settings.database_url
    q = "SELECT user_id, {} FROM {} ORDER BY 1, 2"
    assert [tuple(r) for r in fetch(url, q.format("content_id", "likes"))] == [
        ("bob", "clip-a"),
        ("bob", "clip-b"),
        ("bob", "clip-c"),
    ]
    assert [tuple(r) for r in fetch(url, q.format("creator_id", "creator_subscriptions"))] == [
        ("bob", "studio-1"),
        ("bob", "studio-2"),
    ]
    counters = {
        r["content_id"]: (r["likes"], r["dislikes"], r["comments"], r["shares"])
        for r in fetch(url, "SELECT * FROM content_counters")
    }
    assert counters == {"clip-a": (1, 0, 2, 2), "clip-b": (1, 0, 0, 0), "clip-c": (1, 0, 0, 0)}
    subscribers = dict(tuple(r) for r in fetch(url, "SELECT creator_id, subscribers FROM creator_counters"))
    assert subscribers == {"studio-1": 1, "studio-2": 1, "studio-3": 0}
    # bob's rows of each table, exactly: the purge of alice leaves every one of them
    rows = {"shares": 1, "watch_history": 2, "playlists": 1, "comment_idempotency": 0}
    rows |= {"fallback_idempotency": 0, "playlist_idempotency": 0}
    for table, n in rows.items():
        found = [tuple(r) for r in fetch(url, f"SELECT user_id, count(*) FROM {table} GROUP BY 1")]
        assert found == ([("bob", n)] if n else []), table
    assert fetch(url, "SELECT count(*) FROM comments WHERE user_id = 'alice'")[0][0] == 0
    assert fetch(url, "SELECT count(*) FROM comments WHERE user_id IS NULL AND body IS NULL")[0][0] == 4
    assert fetch(url, "SELECT count(*) FROM comments WHERE counted = soft_delete_flag")[0][0] == 0
    assert fetch(url, "SELECT count(*) FROM playlist_items")[0][0] == 1  # bob's
    assert [tuple(r) for r in fetch(url, "SELECT user_id, content_id FROM watch_history ORDER BY 2")] == [
        ("bob", "clip-a"),
        ("bob", "clip-d"),
    ]  # alice's pending heartbeat was not written by the flush after the purge


def _alice_read_keys(settings: Settings) -> set[str]:
    """The state keys alice's own reads (``_then_only_bob_is_left``) load after the purge: her like
    state on each item and subscription to each creator, as Postgres has them."""
    shards = settings.shards
    likes = {keys.like_key(keys.shard_of(i, shards), i, "alice") for i in ITEMS}
    return likes | {keys.subscription_key(keys.shard_of(c, shards), c, "alice") for c in CREATORS}


def _then_redis_holds_nothing_of_alice(settings: Settings, read_since: bool = False) -> None:
    """No key and no hash field names alice. The purge drops her state keys and pending 0s
    (forget_pairs.lua) once her rows are gone from Postgres, so this holds before the flush too.
    ``read_since``: alice read stats after the purge, which loaded her state keys from Postgres: exactly
    those are there, each a clean copy of Postgres's "no row" (0, with its idle TTL)."""
    loaded = _alice_read_keys(settings) if read_since else set()
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        found = set()
        for key in r.scan_iter("eng:*"):
            if "alice" in key:
                found.add(key)
                # its idle TTL, less the seconds since the read loaded it (not known here exactly)
                assert (r.get(key), 0 < r.ttl(key) <= settings.state_idle_ttl_s) == ("0", True), key
            if r.type(key) == "hash":
                fields = {f: v for f, v in r.hgetall(key).items() if f.endswith("|alice")}
                assert fields == {}, key
        assert found == loaded


def test_a_purge_removes_every_record_of_the_user_and_moves_counts_exactly(
    api: ApiProcess, migrated: Settings
) -> None:
    # Given alice and bob, partly flushed and partly pending
    ids = _given_two_users(api, migrated)

    # When a service without the internal scope asks, then nothing happens
    r = api.client.delete("/internal/v1/users/alice", headers=_auth("gdpr-service"))
    assert (r.status_code, r.json()["error"]) == (403, "insufficient_scope")
    assert api.client.delete("/internal/v1/users/alice").status_code == 401
    for bad in ("a" * 257, "al%01ice"):  # too long, a control character
        r = api.client.delete(f"/internal/v1/users/{bad}", headers=INTERNAL)
        assert (r.status_code, r.json()["error"]) == (422, "invalid_user_id"), bad

    # When alice is purged
    r = api.client.delete("/internal/v1/users/alice", headers=INTERNAL)
    assert r.status_code == 202, r.text
    assert r.json() == {"user_id": "alice", "removed": EXPECTED_REMOVED}

    # Then the live counts and threads hold only bob, at once and after the flusher
    # (Redis checked first: alice's reads below load her state, 0, from Postgres)
    _then_redis_holds_nothing_of_alice(migrated)
    _then_only_bob_is_left(api, migrated, ids, "redis")
    _then_redis_holds_nothing_of_alice(migrated, read_since=True)
    run_flusher_once(migrated)
    _then_only_bob_is_left(api, migrated, ids, "redis")
    _then_postgres_holds_only_bob(migrated)
    _then_redis_holds_nothing_of_alice(migrated, read_since=True)

    # And purging again removes nothing
    r = api.client.delete("/internal/v1/users/alice", headers=INTERNAL)
    assert (r.status_code, r.json()) == (
        202,
        {"user_id": "alice", "removed": dict.fromkeys(EXPECTED_REMOVED, 0)},
    )
    run_flusher_once(migrated)
    _then_postgres_holds_only_bob(migrated)
    _then_only_bob_is_left(api, migrated, ids, "redis")


def test_a_purge_interrupted_midway_ends_exact_when_run_again(
    start_api: Callable[..., ApiProcess], migrated: Settings, redis_back: RedisServer
) -> None:
    api = start_api()
    ids = _given_two_users(api, migrated)
    scripts = Scripts.load()

    async def purge() -> dict:
        client = make_redis(migrated)
        pool = await db.create_pool(migrated)
        try:
            store = Store(migrated, client, scripts, db.provided(pool), Metrics())
            return await purge_user(store, pool, "alice")
        finally:
            await client.aclose()
            await pool.close()

    async def likes_redis_half_only() -> None:
        """What a purge killed right after the likes step's Redis call leaves behind."""
        client = make_redis(migrated)
        pool = await db.create_pool(migrated)
        try:
            store = Store(migrated, client, scripts, db.provided(pool), Metrics())
            assert await store.clear_reactions("alice", ["clip-a"]) == (1, 0)
        finally:
            await client.aclose()
            await pool.close()

    # Given a purge killed after taking back alice's like in Redis but before deleting its row
    asyncio.run(likes_redis_half_only())
    # And a second attempt while Redis is down: the steps that need Redis fail, the others run
    redis_back.stop()
    with pytest.raises(PurgeIncomplete) as failed:
        asyncio.run(purge())
    assert failed.value.failed == ["likes", "subscriptions", "comments", "history", "rate_limits"]
    assert is_unavailable(failed.value)  # the consumer retries it without counting a try
    assert failed.value.summary["removed"] == {
        "shares": 1,
        "playlists": 1,
        "idempotency_records": 1,
    }
    assert fetch(migrated.database_url, "SELECT count(*) FROM comments WHERE user_id = 'alice'")[0][0] == 0

    # When Redis returns and the purge runs again
    redis_back.start()
    api.kill()
    api = start_api()
    summary = asyncio.run(purge())
    assert summary["removed"] == {
        **dict.fromkeys(EXPECTED_REMOVED, 0),
        "likes": 0,
        "dislikes": 2,
        "subscriptions": 3,
        "watch_history": 2,  # history needs Redis: cleared only now
    }

    # Then everything ends exactly as an uninterrupted purge
    _then_redis_holds_nothing_of_alice(migrated)
    _then_only_bob_is_left(api, migrated, ids, "redis")
    run_flusher_once(migrated)
    _then_only_bob_is_left(api, migrated, ids, "redis")
    _then_postgres_holds_only_bob(migrated)
    _then_redis_holds_nothing_of_alice(migrated, read_since=True)


def test_a_purge_after_a_redis_outage_settles_the_fallback_writes_exactly(
    start_api: Callable[..., ApiProcess], migrated: Settings, redis_back: RedisServer
) -> None:
    # Given a user whose id holds glob and separator characters, with a like flushed before an outage,
    # and likes and a subscription written straight to Postgres during it (not yet reconciled)
    weird = "we*rd?[u]|1"
    api = start_api()
    for user in (weird, "bob"):
        _ok(api.client.post("/api/v1/content/clip-f/like", headers=_auth(user)))
    run_flusher_once(migrated)
    redis_back.stop()
    assert _ok(api.client.post("/api/v1/content/clip-f/dislike", headers=_auth(weird)))["dislikes"] == 1
    _ok(api.client.post("/api/v1/content/clip-g/like", headers=_auth(weird)))
    _ok(api.client.post("/api/v1/creators/studio-f/subscribe", headers=_auth(weird)))
    redis_back.start()
    api.kill()
    api = start_api()

    # When the user is purged, then reconcile and the flusher run
    r = api.client.delete(f"/internal/v1/users/{quote(weird, safe='')}", headers=INTERNAL)
    assert r.status_code == 202, r.text
    # The subscription was only in Postgres: the purge loads the states Redis does not hold from
    # Postgres (cold keys), so it now finds that one and takes it back
    assert r.json()["removed"]["subscriptions"] == 1
    assert "3 fallback writes settled" in cli_reconcile(migrated)
    run_flusher_once(migrated)

    # Then only bob's like is left, in Redis and in Postgres
    for item, want in (("clip-f", (1, 0)), ("clip-g", (0, 0))):
        body = api.client.get(f"/api/v1/content/{item}/stats", headers=_auth(weird)).json()
        assert (body["likes"], body["dislikes"], body["viewer_state"]) == (*want, "none"), item
    assert api.client.get("/api/v1/creators/studio-f").json()["subscribers"] == 0
    url = migrated.database_url
    assert [tuple(r) for r in fetch(url, "SELECT user_id, content_id FROM likes")] == [("bob", "clip-f")]
    counters = {
        r[0]: (r[1], r[2]) for r in fetch(url, "SELECT content_id, likes, dislikes FROM content_counters")
    }
    assert counters == {"clip-f": (1, 0), "clip-g": (0, 0)}
    assert fetch(url, "SELECT count(*) FROM creator_subscriptions")[0][0] == 0
    assert fetch(url, "SELECT subscribers FROM creator_counters WHERE creator_id = 'studio-f'")[0][0] == 0
    assert fetch(url, "SELECT count(*) FROM fallback_log WHERE user_id = $1", weird)[0][0] == 0
