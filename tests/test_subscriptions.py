"""Creator subscriptions: one Lua round trip per change in the creator's slot, exact subscriber counts,
records and counts in Postgres after the flusher."""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import httpx
import redis
from lease_helpers import held_leases
from service_fixtures import ApiProcess, run_flusher_once, token

from daemon import db, keys
from daemon.metrics import Metrics
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from flusher.flusher import Flusher
from flusher.writer import write_batches
from lua import Scripts


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _sub(api: ApiProcess, method: str, creator: str, user: str, **headers: str) -> httpx.Response:
    return api.client.request(
        method, f"/api/v1/creators/{creator}/subscribe", headers={**_auth(user), **headers}
    )


def _postgres(database_url: str) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """(creator_counters as {creator_id: subscribers}, creator_subscriptions as {(user_id, creator_id)})."""

    async def fetch() -> tuple[dict[str, int], set[tuple[str, str]]]:
        conn = await asyncpg.connect(database_url)
        try:
            counters = await conn.fetch("SELECT creator_id, subscribers FROM creator_counters")
            subs = await conn.fetch("SELECT user_id, creator_id FROM creator_subscriptions")
        finally:
            await conn.close()
        return (
            {r["creator_id"]: r["subscribers"] for r in counters},
            {(r["user_id"], r["creator_id"]) for r in subs},
        )

    return asyncio.run(fetch())


def test_subscribe_and_unsubscribe_move_state_and_count(api: ApiProcess) -> None:
    steps = [
        ("POST", "alice", {"state": "subscribed", "subscribers": 1}),
        ("POST", "alice", {"state": "subscribed", "subscribers": 1}),  # repeating changes nothing
        ("POST", "bob", {"state": "subscribed", "subscribers": 2}),
        ("DELETE", "alice", {"state": "none", "subscribers": 1}),
        ("DELETE", "alice", {"state": "none", "subscribers": 1}),  # not subscribed: nothing to remove
        ("DELETE", "carol", {"state": "none", "subscribers": 1}),
    ]
    for method, user, expected in steps:
        r = _sub(api, method, "maker-1", user)
        assert (r.status_code, r.json()) == (200, {"creator_id": "maker-1", **expected}), (method, user)

    r = api.client.get("/api/v1/creators/maker-1")
    assert (r.status_code, r.json()) == (200, {"creator_id": "maker-1", "subscribers": 1})
    assert r.headers["x-counts-source"] == "redis"
    assert (
        api.client.get("/api/v1/creators/maker-1", headers=_auth("bob")).json()["viewer_state"]
        == "subscribed"
    )
    assert api.client.get("/api/v1/creators/maker-1", headers=_auth("alice")).json()["viewer_state"] == "none"
    # another creator is untouched; one nobody ever subscribed to reads 0 from Postgres
    r = api.client.get("/api/v1/creators/maker-2", headers=_auth("bob"))
    assert r.json() == {"creator_id": "maker-2", "subscribers": 0, "viewer_state": "none"}
    assert r.headers["x-counts-source"] == "postgres"


def test_bad_subscription_requests_are_refused(api: ApiProcess) -> None:
    r = _sub(api, "POST", "alice", "alice")
    assert (r.status_code, r.json()["error"]) == (422, "self_subscription")
    assert api.client.get("/api/v1/creators/alice").json()["subscribers"] == 0
    r = api.client.post("/api/v1/creators/maker-1/subscribe")
    assert (r.status_code, r.json()["error"]) == (401, "missing_token")
    r = api.client.delete("/api/v1/creators/maker-1/subscribe", headers={"Authorization": "Bearer nope"})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")
    for path in ("/api/v1/creators/bad%20id/subscribe", "/api/v1/creators/" + "x" * 129 + "/subscribe"):
        r = api.client.post(path, headers=_auth("alice"))
        assert (r.status_code, r.json()["error"]) == (422, "invalid_creator_id")
    r = api.client.get("/api/v1/creators/bad%7Cid")
    assert (r.status_code, r.json()["error"]) == (422, "invalid_creator_id")
    r = api.client.get("/api/v1/creators/maker-1", headers={"Authorization": "Bearer nope"})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")
    r = _sub(api, "POST", "maker-1", "alice", **{"Idempotency-Key": "has space"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_idempotency_key")
    assert api.client.get("/api/v1/creators/maker-1").json()["subscribers"] == 0


def test_an_idempotency_key_replays_the_first_answer_and_applies_nothing_again(api: ApiProcess) -> None:
    # Given a subscription sent with an Idempotency-Key, then removed by a request without one
    first = _sub(api, "POST", "maker-3", "alice", **{"Idempotency-Key": "k-1"})
    assert first.json() == {"creator_id": "maker-3", "state": "subscribed", "subscribers": 1}
    assert _sub(api, "DELETE", "maker-3", "alice").json()["subscribers"] == 0

    # When the first request is retried with the same key
    retry = _sub(api, "POST", "maker-3", "alice", **{"Idempotency-Key": "k-1"})

    # Then it gets the first answer, marked as a replay, and nothing is applied again
    assert (retry.status_code, retry.json()) == (200, first.json())
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert api.client.get("/api/v1/creators/maker-3").json()["subscribers"] == 0

    # And the same key for a different request is refused, while another user's key is their own
    other = _sub(api, "DELETE", "maker-3", "alice", **{"Idempotency-Key": "k-1"})
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    assert _sub(api, "POST", "maker-3", "bob", **{"Idempotency-Key": "k-1"}).json()["subscribers"] == 1
    # a like with the same key on an item named like the creator is a separate record
    like = api.client.post(
        "/api/v1/content/maker-3/like", headers={**_auth("alice"), "Idempotency-Key": "k-1"}
    )
    assert (like.status_code, like.json()["likes"]) == (200, 1)


async def _ordered_storm(base_url: str, per_pair: dict[tuple[str, str], list[str]]) -> None:
    """Each (user, creator) sequence runs in order; different pairs interleave freely."""
    semaphore = asyncio.Semaphore(48)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def run(pair: tuple[str, str], sequence: list[str]) -> None:
            user, creator = pair
            for method in sequence:
                async with semaphore:
                    r = await client.request(
                        method, f"/api/v1/creators/{creator}/subscribe", headers=_auth(user)
                    )
                assert r.status_code == 200, r.text

        await asyncio.gather(*(run(pair, seq) for pair, seq in per_pair.items()))


def _final_states(
    per_pair: dict[tuple[str, str], list[str]], start: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    subscribed = set(start)
    for pair, sequence in per_pair.items():
        if sequence:
            subscribed.discard(pair)
            if sequence[-1] == "POST":
                subscribed.add(pair)
    return subscribed


def test_a_storm_of_subscriptions_ends_exact_in_the_api_and_in_postgres(
    start_api, migrated: Settings
) -> None:
    api = start_api(migrated.replace(rate_limits=""))  # a storm, not abuse: no per-user limit here
    rng = random.Random(7)
    creators = [f"creator-{i}" for i in range(4)]
    subscribed: set[tuple[str, str]] = set()
    for round_ in range(2):  # the second round removes and adds records the first flush wrote
        # Given 300 users each sending a random sequence of subscribes and unsubscribes, concurrently
        per_pair: dict[tuple[str, str], list[str]] = {}
        for u in range(300):
            for creator in rng.sample(creators, 2):
                per_pair[(f"user-{u}", creator)] = [
                    rng.choice(["POST", "DELETE"]) for _ in range(rng.randint(1, 4))
                ]
        asyncio.run(_ordered_storm(api.base_url, per_pair))
        subscribed = _final_states(per_pair, subscribed)
        expected = {c: sum(1 for _, sc in subscribed if sc == c) for c in creators}

        # Then each creator's count follows from the users' own sequences
        for creator in creators:
            body = api.client.get(f"/api/v1/creators/{creator}").json()
            assert body["subscribers"] == expected[creator], (round_, creator)

        # And after the flusher, Postgres has the same counts and exactly these subscription records
        run_flusher_once(migrated)
        counters, records = _postgres(migrated.database_url)
        assert {c: counters.get(c, 0) for c in creators} == expected, round_
        assert records == subscribed, round_

    # And a creator with no live count in Redis is read from Postgres, viewer state included
    creator = creators[0]
    user = next(u for u, c in sorted(subscribed) if c == creator)
    with redis.Redis.from_url(migrated.redis_url) as r:
        shard = keys.shard_of(creator, migrated.shards)
        # (both keys carry their idle TTL once flushed: evicting them is what Redis may do)
        assert r.delete(keys.creator_key(shard, creator), keys.subscription_key(shard, creator, user)) == 2
    r = api.client.get(f"/api/v1/creators/{creator}", headers=_auth(user))
    assert r.headers["x-counts-source"] == "postgres"
    assert r.json() == {"creator_id": creator, "subscribers": expected[creator], "viewer_state": "subscribed"}


def test_a_subscription_batch_committed_before_a_crash_is_not_written_twice(migrated: Settings) -> None:
    settings = migrated.replace(flush_lease_ms=300)

    async def scenario() -> None:
        client = make_redis(settings)
        pool = await db.create_pool(settings)
        scripts = Scripts.load()
        store = Store(settings, client, scripts, db.provided(pool), Metrics())
        shard = keys.shard_of("maker-9", settings.shards)

        async def change(user: str, action: str) -> None:
            await store.set_subscription("maker-9", user, action, "")

        try:
            # Given alice and bob subscribed, and a flusher that committed them and died before finishing
            await change("alice", "subscribe")
            await change("bob", "subscribe")
            crashed = Flusher(settings, client, pool, scripts, Metrics())
            batches = await crashed.capture()
            assert [(b.creators, b.subscriptions) for b in batches] == [
                ({"maker-9": 2}, {("alice", "maker-9"): 1, ("bob", "maker-9"): 1})
            ]
            async with pool.acquire() as conn:
                await write_batches(conn, batches)
            # and, meanwhile, alice left and carol came
            await change("alice", "unsubscribe")
            await change("carol", "subscribe")

            # When the next flusher runs once the crashed one's lease expired
            deadline = time.monotonic() + 10
            while await held_leases(client):
                assert time.monotonic() < deadline, "the crashed flusher's lease never expired"
                await asyncio.sleep(0.01)
            successor = Flusher(settings, client, pool, scripts, Metrics())
            first = await successor.flush_once()
            assert first is not None and [b.batch_id for b in first.already] == [batches[0].batch_id]
            assert first.committed == []
            second = await successor.flush_once()
            assert second is not None and len(second.committed) == 1
            assert await successor.flush_once() is None

            # Then Postgres holds each change once
            count = await pool.fetchval(
                "SELECT subscribers FROM creator_counters WHERE creator_id = 'maker-9'"
            )
            records = await pool.fetch("SELECT user_id FROM creator_subscriptions ORDER BY user_id")
            assert (count, [r["user_id"] for r in records]) == (2, ["bob", "carol"])
            assert not await client.exists(keys.subdelta_key(shard), keys.subbatch_key(shard))
        finally:
            await client.aclose()
            await pool.close()

    asyncio.run(scenario())
