"""Likes and dislikes: one Lua round trip per change, exact counts, state in Postgres after the flusher."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import httpx
import redis
from service_fixtures import ApiProcess, counters_in_postgres, run_flusher_once, token

from daemon.settings import Settings


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _react(
    api: ApiProcess, method: str, what: str, content_id: str, user: str, **headers: str
) -> httpx.Response:
    return api.client.request(
        method, f"/api/v1/content/{content_id}/{what}", headers={**_auth(user), **headers}
    )


def _likes_table(database_url: str) -> dict[tuple[str, str], int]:
    async def fetch() -> dict[tuple[str, str], int]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT user_id, content_id, value FROM likes")
        finally:
            await conn.close()
        return {(r["user_id"], r["content_id"]): r["value"] for r in rows}

    return asyncio.run(fetch())


def test_like_dislike_and_removal_move_state_and_counts(api: ApiProcess) -> None:
    steps = [
        ("POST", "like", {"state": "liked", "likes": 1, "dislikes": 0}),
        ("POST", "like", {"state": "liked", "likes": 1, "dislikes": 0}),  # repeating changes nothing
        ("POST", "dislike", {"state": "disliked", "likes": 0, "dislikes": 1}),  # switches
        ("DELETE", "like", {"state": "disliked", "likes": 0, "dislikes": 1}),  # not liked: nothing to remove
        ("DELETE", "dislike", {"state": "none", "likes": 0, "dislikes": 0}),
        ("DELETE", "dislike", {"state": "none", "likes": 0, "dislikes": 0}),
        ("POST", "like", {"state": "liked", "likes": 1, "dislikes": 0}),
    ]
    for method, what, expected in steps:
        r = _react(api, method, what, "clip-1", "alice")
        assert (r.status_code, r.json()) == (200, expected), (method, what)
    stats = api.client.get("/api/v1/content/clip-1/stats", headers=_auth("alice")).json()
    assert (stats["likes"], stats["dislikes"], stats["viewer_state"]) == (1, 0, "liked")
    other = api.client.get("/api/v1/content/clip-1/stats", headers=_auth("bob")).json()
    assert other["viewer_state"] == "none"
    assert "viewer_state" not in api.client.get("/api/v1/content/clip-1/stats").json()


def test_reactions_need_a_valid_token(api: ApiProcess) -> None:
    r = api.client.post("/api/v1/content/clip-1/like")
    assert (r.status_code, r.json()["error"]) == (401, "missing_token")
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = api.client.post("/api/v1/content/clip-1/like", headers={"Authorization": "Bearer nope"})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")
    r = api.client.post("/api/v1/content/bad%20id/like", headers=_auth("alice"))
    assert (r.status_code, r.json()["error"]) == (422, "invalid_content_id")


def test_an_idempotency_key_replays_the_first_answer_and_applies_nothing_again(api: ApiProcess) -> None:
    # Given a like sent with an Idempotency-Key, then removed by a request without one
    first = _react(api, "POST", "like", "clip-2", "alice", **{"Idempotency-Key": "k-1"})
    assert first.json() == {"state": "liked", "likes": 1, "dislikes": 0}
    assert _react(api, "DELETE", "like", "clip-2", "alice").json()["state"] == "none"

    # When the first request is retried with the same key
    retry = _react(api, "POST", "like", "clip-2", "alice", **{"Idempotency-Key": "k-1"})

    # Then it gets the first answer, marked as a replay, and the like is not applied again
    assert (retry.status_code, retry.json()) == (200, first.json())
    assert retry.headers["idempotent-replayed"] == "true"
    assert api.client.get("/api/v1/content/clip-2/stats").json()["likes"] == 0

    # And the same key for a different request is refused
    other = _react(api, "POST", "dislike", "clip-2", "alice", **{"Idempotency-Key": "k-1"})
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    # while another user's identical key is their own
    assert _react(api, "POST", "like", "clip-2", "bob", **{"Idempotency-Key": "k-1"}).json()["likes"] == 1
    bad = _react(api, "POST", "like", "clip-2", "bob", **{"Idempotency-Key": "has space"})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_idempotency_key")


async def _storm(base_url: str, requests: list[tuple[str, str, str, str]], concurrency: int = 48) -> None:
    queue = list(requests)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            method, what, content_id, user = queue.pop()
            r = await client.request(method, f"/api/v1/content/{content_id}/{what}", headers=_auth(user))
            assert r.status_code == 200, r.text

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def test_hundreds_of_concurrent_likes_by_one_user_count_once(start_api, migrated: Settings) -> None:
    api = start_api(migrated.replace(rate_limits=""))  # a storm, not abuse: no per-user limit here
    asyncio.run(_storm(api.base_url, [("POST", "like", "viral", "eager-fan")] * 400))
    assert api.client.get("/api/v1/content/viral/stats").json()["likes"] == 1
    run_flusher_once(migrated)
    assert counters_in_postgres(migrated.database_url)["viral"]["likes"] == 1
    assert _likes_table(migrated.database_url) == {("eager-fan", "viral"): 1}


def test_a_storm_of_likes_switches_and_removals_ends_exact_in_stats_and_postgres(
    start_api, migrated: Settings
) -> None:
    api = start_api(migrated)
    # Given 300 users each sending a random sequence of reactions to 5 items, concurrently
    rng = random.Random(11)
    items = [f"item-{i}" for i in range(5)]
    per_user: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for u in range(300):
        for content_id in rng.sample(items, 2):
            per_user[(f"user-{u}", content_id)] = [
                rng.choice([("POST", "like"), ("POST", "dislike"), ("DELETE", "like"), ("DELETE", "dislike")])
                for _ in range(rng.randint(1, 4))
            ]
    # each (user, item) sequence runs in order; different pairs interleave freely
    asyncio.run(_ordered_storm(api.base_url, per_user))

    # Then the final state of each pair follows from its own sequence
    expected: dict[tuple[str, str], int] = {}
    for pair, sequence in per_user.items():
        state = 0
        for method, what in sequence:
            if method == "POST":
                state = 1 if what == "like" else -1
            elif (what == "like" and state == 1) or (what == "dislike" and state == -1):
                state = 0
        if state:
            expected[pair] = state
    for content_id in items:
        stats = api.client.get(f"/api/v1/content/{content_id}/stats").json()
        likes = sum(1 for (_, c), s in expected.items() if c == content_id and s == 1)
        dislikes = sum(1 for (_, c), s in expected.items() if c == content_id and s == -1)
        assert (stats["likes"], stats["dislikes"]) == (likes, dislikes), content_id

    # And after the flusher, Postgres has the same counts and exactly these like records
    run_flusher_once(migrated)
    rows = counters_in_postgres(migrated.database_url)
    for content_id in items:
        likes = sum(1 for (_, c), s in expected.items() if c == content_id and s == 1)
        dislikes = sum(1 for (_, c), s in expected.items() if c == content_id and s == -1)
        assert (rows[content_id]["likes"], rows[content_id]["dislikes"]) == (likes, dislikes)
    assert _likes_table(migrated.database_url) == expected


async def _ordered_storm(base_url: str, per_pair: dict[tuple[str, str], list[tuple[str, str]]]) -> None:
    semaphore = asyncio.Semaphore(48)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def run(pair: tuple[str, str], sequence: list[tuple[str, str]]) -> None:
            user, content_id = pair
            for method, what in sequence:
                async with semaphore:
                    r = await client.request(
                        method, f"/api/v1/content/{content_id}/{what}", headers=_auth(user)
                    )
                assert r.status_code == 200, r.text

        await asyncio.gather(*(run(pair, seq) for pair, seq in per_pair.items()))


def test_likes_past_the_per_user_limit_get_429_with_retry_after(start_api, migrated: Settings) -> None:
    # Given a limit of 3 like actions a minute per user
    api = start_api(migrated.replace(rate_limits="like=3/60s,dislike=100/60s"))
    for what, method in [("like", "POST"), ("like", "DELETE"), ("like", "POST")]:
        assert _react(api, method, what, "limited", "alice").status_code == 200

    # When a fourth arrives
    r = _react(api, "POST", "like", "other-item", "alice")

    # Then it is refused, counted, and changes nothing; other users and other actions go on
    assert (r.status_code, r.json()["error"]) == (429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert api.client.get("/api/v1/content/other-item/stats").json()["likes"] == 0
    assert _react(api, "POST", "like", "other-item", "bob").status_code == 200
    assert _react(api, "POST", "dislike", "other-item", "alice").status_code == 200
    assert 'engagement_rate_limited_total{action="like"} 1.0' in api.client.get("/metrics").text


def test_a_limited_like_on_evicted_keys_is_loaded_and_admitted_once(start_api, migrated: Settings) -> None:
    """The limit and the reaction are one script call: when the item's keys are missing (evicted), the
    call answers "unknown", they are loaded from Postgres and the call is sent again; the limit admits
    the re-sent call as the same request, not as a second one."""
    api = start_api(migrated.replace(rate_limits="like=1/60s"))
    assert _react(api, "POST", "like", "cold-item", "bob").status_code == 200
    run_flusher_once(migrated)  # Postgres has the item and bob's like
    with redis.Redis.from_url(migrated.redis_url) as client:
        evicted = [k for k in client.scan_iter("eng:*:c:cold-item")] + list(
            client.scan_iter("eng:*:lk:cold-item|*")
        )
        assert len(evicted) == 2 and client.delete(*evicted) == 2
    r = _react(api, "POST", "like", "cold-item", "alice")
    assert (r.status_code, r.json()) == (200, {"state": "liked", "likes": 2, "dislikes": 0}), r.text
    with redis.Redis.from_url(migrated.redis_url) as client:
        assert client.zcard("eng:{u:alice}:rl:like") == 1
    r = _react(api, "POST", "like", "other-item", "alice")  # her second like in the window
    assert (r.status_code, r.json()["error"]) == (429, "rate_limited")
