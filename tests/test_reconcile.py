"""``engagementd reconcile``: the live counts, like states and subscriptions Redis holds checked against
Postgres plus the pending Redis deltas, drift repaired and reported exactly, concurrent increments never
lost; what Redis lost is loaded back exactly from Postgres on first use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from seeds import seeded_random
from service_fixtures import ApiProcess, cli_reconcile, run_flusher_once, token, wait_until

from daemon import db, keys
from daemon.metrics import Metrics
from daemon.reconcile import reconcile
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from daemon.views.buffer import ViewBuffer
from flusher.flusher import Flusher
from lua import Scripts


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _stats(api: ApiProcess, content_id: str, user: str) -> dict[str, object]:
    r = api.client.get(f"/api/v1/content/{content_id}/stats", headers=_auth(user))
    assert r.status_code == 200, r.text
    return {**r.json(), "source": r.headers["x-counts-source"]}


def _creator(api: ApiProcess, creator: str, user: str) -> dict[str, object]:
    r = api.client.get(f"/api/v1/creators/{creator}", headers=_auth(user))
    assert r.status_code == 200, r.text
    return {**r.json(), "source": r.headers["x-counts-source"]}


def test_after_flushall_counts_and_states_read_back_exactly_and_reconcile_finds_nothing(
    api: ApiProcess, migrated: Settings
) -> None:
    # Given views, likes, dislikes and subscriptions, all flushed to Postgres
    items = [f"clip-{i}" for i in range(6)]
    views = {item: 3 + i for i, item in enumerate(items)}
    for item, n in views.items():
        for _ in range(n):
            assert api.client.post(f"/api/v1/content/{item}/views").status_code == 202
    reactions = {}  # (user, item) -> expected state name
    for u in range(8):
        user = f"user-{u}"
        for i, item in enumerate(items):
            what = ("like", "dislike", None)[(u + i) % 3]
            if what is None:
                continue
            r = api.client.post(f"/api/v1/content/{item}/{what}", headers=_auth(user))
            assert r.status_code == 200, r.text
            reactions[(user, item)] = "liked" if what == "like" else "disliked"
    subscriptions = {(f"user-{u}", f"studio-{u % 3}") for u in range(8)}
    for user, creator in subscriptions:
        assert (
            api.client.post(f"/api/v1/creators/{creator}/subscribe", headers=_auth(user)).status_code == 200
        )
    wait_until(
        lambda: all(_stats(api, item, "x")["views"] == n for item, n in views.items()),
        what="the views to reach Redis",
    )
    run_flusher_once(migrated)
    expected = {item: _stats(api, item, "nobody") for item in items}
    expected_creators = {
        c: _creator(api, c, "nobody")["subscribers"] for c in ("studio-0", "studio-1", "studio-2")
    }

    # When Redis loses everything and reconcile runs
    with redis.Redis.from_url(migrated.redis_url) as client:
        client.flushall()
    out = cli_reconcile(migrated)

    # Then reconcile finds nothing to repair: it checks only the keys Redis holds, and a lost key is
    # cold, loaded from Postgres when next used (docs/redis-memory.md)
    shards = migrated.shards
    nothing = "0 fields repaired, drift 0, 0 like states and 0 subscriptions rebuilt"
    assert out.strip() == f"reconciled {shards} shards: 0 items checked, {nothing}", out
    # And the live counts, like states and subscriptions read back exactly: an item's first read loads
    # its counts from Postgres (and seeds Redis), the later ones are Redis's
    for item in items:
        for u in range(8):
            user = f"user-{u}"
            got = _stats(api, item, user)
            assert got["source"] == ("postgres" if u == 0 else "redis"), (user, item)
            assert {k: got[k] for k in ("views", "likes", "dislikes")} == {
                k: expected[item][k] for k in ("views", "likes", "dislikes")
            }
            assert got["views"] == views[item]
            assert got["viewer_state"] == reactions.get((user, item), "none"), (user, item)
    for creator, n in expected_creators.items():
        for u in range(8):
            user = f"user-{u}"
            got = _creator(api, creator, user)
            assert (got["source"], got["subscribers"]) == ("postgres" if u == 0 else "redis", n)
            want = "subscribed" if (user, creator) in subscriptions else "none"
            assert got["viewer_state"] == want

    # And a second run, which now checks every key those reads loaded, finds nothing to repair
    out = cli_reconcile(migrated)
    assert out.strip() == f"reconciled {shards} shards: {len(items) + 3} items checked, {nothing}", out


@dataclass
class Stack:
    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool
    scripts: Scripts
    store: Store
    buffer: ViewBuffer

    async def views(self, counts: dict[str, int]) -> None:
        for content_id, n in counts.items():
            for _ in range(n):
                assert self.buffer.add(content_id, 0)
        assert await self.buffer.drain_once()

    def counts_key(self, content_id: str) -> str:
        return keys.counts_key(keys.shard_of(content_id, self.settings.shards), content_id)

    def like_key(self, content_id: str, user_id: str) -> str:
        return keys.like_key(keys.shard_of(content_id, self.settings.shards), content_id, user_id)

    async def live(self, counter: str, content_id: str) -> int:
        return int(await self.redis.hget(self.counts_key(content_id), counter) or 0)


@pytest.fixture
async def stack(migrated: Settings) -> AsyncIterator[Stack]:
    client = make_redis(migrated)
    pool = await db.create_pool(migrated)
    scripts = Scripts.load()
    store = Store(migrated, client, scripts, db.provided(pool), Metrics())
    buffer = ViewBuffer(migrated, store, Metrics())
    try:
        yield Stack(migrated, client, pool, scripts, store, buffer)
    finally:
        await client.aclose()
        await pool.close()


async def test_drift_set_by_hand_is_repaired_and_reported_exactly(stack: Stack) -> None:
    # Given counts partly flushed to Postgres, partly pending in Redis, and a like state
    await stack.views({"a": 5, "b": 2})
    await Flusher(stack.settings, stack.redis, stack.pool, stack.scripts, Metrics()).drain()
    await stack.views({"a": 3})  # pending: the true count of a is 8
    await stack.pool.execute("INSERT INTO likes (user_id, content_id, value) VALUES ('u1', 'a', 1)")
    await stack.pool.execute("UPDATE content_counters SET likes = 1 WHERE content_id = 'a'")
    await stack.redis.hset(stack.counts_key("a"), "likes", 1)
    # the flushed like's state key, clean: with its idle TTL
    await stack.redis.set(stack.like_key("a", "u1"), 1, ex=stack.settings.state_idle_ttl_s)
    # When the live values drift: views of a too high by 10, views of b too low by 2 (set to 0: deleting
    # the key, or its only field, would make it cold, loaded on next use, not drift), likes wrong, and
    # the like state lost (0, where a deleted key would be cold too)
    await stack.redis.hset(stack.counts_key("a"), "views", 18)
    await stack.redis.hset(stack.counts_key("b"), "views", 0)
    await stack.redis.hset(stack.counts_key("a"), "likes", -4)
    await stack.redis.set(stack.like_key("a", "u1"), 0, keepttl=True)
    metrics = Metrics(roles=("flusher",))
    report = await reconcile(stack.store, stack.pool, metrics)

    # Then exactly those fields are repaired, by exactly that drift, and the state is rebuilt
    assert report.shards == stack.settings.shards and not report.skipped_shards
    assert report.items_checked == 2
    assert (report.fields_repaired, report.drift, report.states_repaired) == (3, 10 + 2 + 5, 1)
    assert report.keys_unpinned == 0  # a's counts stay pinned (views pending), the others have a TTL
    assert sorted((r.field, r.was, r.now) for r in report.repairs) == [
        ("likes:a", -4, 1),
        ("views:a", 18, 8),
        ("views:b", 0, 2),
    ]
    assert (
        await stack.live("views", "a"),
        await stack.live("views", "b"),
        await stack.live("likes", "a"),
    ) == (
        8,
        2,
        1,
    )
    assert await stack.redis.get(stack.like_key("a", "u1")) == "1"
    assert metrics.reconcile_runs._value.get() == 1
    assert metrics.reconcile_repaired_fields._value.get() == 3
    assert metrics.reconcile_drift._value.get() == 17

    # And the pending delta is untouched: after a flush, Postgres holds the true count
    await Flusher(stack.settings, stack.redis, stack.pool, stack.scripts, Metrics()).drain()
    assert await stack.pool.fetchval("SELECT views FROM content_counters WHERE content_id = 'a'") == 8


async def test_a_pending_like_state_is_newer_than_postgres_and_left_alone(stack: Stack) -> None:
    # Given Postgres says u1 likes a, but a newer removal is pending in Redis (the state key 0, pinned
    # and listed dirty, as set_reaction.lua leaves it)
    shard = keys.shard_of("a", stack.settings.shards)
    await stack.pool.execute("INSERT INTO likes (user_id, content_id, value) VALUES ('u1', 'a', 1)")
    await stack.redis.hset(keys.sdelta_key(shard), keys.state_field("a", "u1"), 0)
    await stack.redis.set(stack.like_key("a", "u1"), 0)
    await stack.redis.sadd(keys.dirty_key(shard), stack.like_key("a", "u1"))
    # And Redis has a like that Postgres does not, with nothing pending: stale
    await stack.redis.set(stack.like_key("a", "u2"), -1)
    report = await reconcile(stack.store, stack.pool)
    assert report.states_repaired == 1
    assert [await stack.redis.get(stack.like_key("a", u)) for u in ("u1", "u2")] == ["0", "0"]
    # The stale key had nothing pending: it gets its idle TTL back; u1's stays pinned
    assert report.keys_unpinned == 1
    assert await stack.redis.ttl(stack.like_key("a", "u1")) == -1
    assert await stack.redis.ttl(stack.like_key("a", "u2")) > 0


async def test_views_arriving_during_reconcile_are_not_lost(stack: Stack) -> None:
    # Given items on every shard, partly flushed, with drift on many of them
    items = [f"item-{i}" for i in range(200)]
    sent = dict.fromkeys(items, 0)
    rng = seeded_random("views and items")
    first = {item: rng.randint(1, 5) for item in items}
    await stack.views(first)
    for item, n in first.items():
        sent[item] += n
    await Flusher(stack.settings, stack.redis, stack.pool, stack.scripts, Metrics()).drain()
    for item in items[::3]:
        await stack.redis.hincrby(stack.counts_key(item), "views", 1000)

    # When views keep arriving while reconcile runs, and a flusher flushes concurrently
    stop = asyncio.Event()

    async def storm() -> None:
        while not stop.is_set():
            batch = {item: rng.randint(1, 3) for item in rng.sample(items, 40)}
            await stack.views(batch)
            for item, n in batch.items():
                sent[item] += n
            await asyncio.sleep(0)

    async def flushing() -> None:
        flusher = Flusher(stack.settings, stack.redis, stack.pool, stack.scripts, Metrics())
        while not stop.is_set():
            await flusher.flush_once()
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(storm()), asyncio.create_task(flushing())]
    reports = []
    for _ in range(3):
        reports.append(await reconcile(stack.store, stack.pool))
    stop.set()
    await asyncio.gather(*tasks)

    # Then every live count is exact, and so is Postgres after a final flush
    # (the storm's views are counted by the scripts reconcile compares against: no drift of their own)
    assert reports[0].drift == 1000 * len(items[::3])
    assert sum(r.drift for r in reports) == reports[0].drift  # the later runs find nothing
    for item in items:
        assert await stack.live("views", item) == sent[item], item
    await Flusher(stack.settings, stack.redis, stack.pool, stack.scripts, Metrics()).drain()
    rows = dict(await stack.pool.fetch("SELECT content_id, views FROM content_counters"))
    assert rows == sent


async def test_the_flusher_reconciles_every_interval(stack: Stack) -> None:
    # Given drift in Redis and a flusher that reconciles every 0.2 s
    await stack.views({"a": 4})
    await stack.redis.hset(stack.counts_key("a"), "views", 40)
    settings = stack.settings.replace(reconcile_interval_s=0.2, flush_interval_ms=50)
    metrics = Metrics(roles=("flusher",))
    flusher = Flusher(settings, stack.redis, stack.pool, stack.scripts, metrics)
    running = asyncio.create_task(flusher.run())
    try:
        for _ in range(200):
            if metrics.reconcile_runs._value.get() >= 1:
                break
            await asyncio.sleep(0.02)
    finally:
        flusher.stop()
        await running
    # Then it ran, repaired the drift and counted it (a second run may start before stop(): >= 1)
    assert metrics.reconcile_runs._value.get() >= 1
    assert (metrics.reconcile_repaired_fields._value.get(), metrics.reconcile_drift._value.get()) == (1, 36)
    assert await stack.live("views", "a") == 4
