"""Unique viewers: HyperLogLogs per item, all time and per UTC day, fed by views with a user id, in
the stats and in Postgres (content_unique_viewers, content_unique_viewers_daily) after a flush."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import date
from pathlib import Path

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from service_fixtures import ApiProcess, run_flusher_once, token, wait_until

from daemon import db, keys
from daemon.metrics import Metrics
from daemon.proc.servers import RedisClusterServers, RedisServer
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from daemon.views.buffer import ViewBuffer
from daemon.views.drains import Drain
from flusher import uniques
from lua import Scripts

INGEST = {"Authorization": f"Bearer {token(scope='ingest')}"}


def _stats(api: ApiProcess, content_id: str) -> dict[str, object]:
    response = api.client.get(f"/api/v1/content/{content_id}/stats")
    assert response.status_code == 200
    return response.json()


def _uniques(api: ApiProcess, content_id: str) -> tuple[int, int]:
    body = _stats(api, content_id)
    return body["unique_viewers"], body["unique_viewers_today"]  # type: ignore[return-value]


def _view(api: ApiProcess, content_id: str, user: str | None = None, body: dict | None = None) -> None:
    headers = {"Authorization": f"Bearer {token(sub=user)}"} if user else {}
    assert (
        api.client.post(f"/api/v1/content/{content_id}/views", headers=headers, json=body).status_code == 202
    )


def _batch(api: ApiProcess, items: list[dict[str, object]]) -> None:
    response = api.client.post("/api/v1/views/batch", json=items, headers=INGEST)
    assert response.status_code == 202, response.text


def _wait_views(api: ApiProcess, content_id: str, views: int) -> None:
    wait_until(lambda: _stats(api, content_id)["views"] == views, what=f"{views} views of {content_id}")


def _rows(database_url: str, query: str) -> list[tuple[object, ...]]:
    async def fetch() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(database_url)
        try:
            return [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _daily(database_url: str) -> dict[tuple[str, date], int]:
    rows = _rows(database_url, "SELECT content_id, day, unique_viewers FROM content_unique_viewers_daily")
    return {(c, d): n for c, d, n in rows}  # type: ignore[misc]


def _all_time(database_url: str) -> dict[str, int]:
    return dict(_rows(database_url, "SELECT content_id, unique_viewers FROM content_unique_viewers"))  # type: ignore[arg-type]


def test_ten_users_viewing_five_times_each_are_ten_unique_viewers(api: ApiProcess) -> None:
    # Given 10 users each viewing one item 5 times with their token, and 10 others 5 times in batches
    for _ in range(5):
        for u in range(10):
            _view(api, "small-1", f"user-{u}")
    _batch(api, [{"content_id": "small-2", "user_id": f"b-{u}"} for _ in range(5) for u in range(10)])

    # Then the stats count each user once, all time and today (small HLLs are exact)
    _wait_views(api, "small-1", 50)
    _wait_views(api, "small-2", 50)
    assert _uniques(api, "small-1") == (10, 10)
    assert _uniques(api, "small-2") == (10, 10)


def test_twenty_thousand_users_are_estimated_within_two_percent_and_reach_postgres(
    start_api: Callable[..., ApiProcess], migrated: Settings
) -> None:
    api = start_api(migrated.replace(unique_viewers_day="2026-02-01"))
    # Given 20,000 distinct users viewing one item twice each in batches, with watch time and an
    # explicit media_started on some, and 2,000 other users sending playback signals (not views)
    users = [f"viewer-{u}" for u in range(20_000)]
    events: list[dict[str, object]] = []
    for repeat in range(2):
        for u, user in enumerate(users):
            event: dict[str, object] = {"content_id": "big", "user_id": user}
            if u % 3 == 0:
                event["watch_seconds"] = 10
            if repeat == 1 and u % 5 == 0:
                event["event_type"] = "media_started"
            events.append(event)
    events += [
        {"content_id": "big", "user_id": f"other-{u}", "event_type": "media_completed"} for u in range(2_000)
    ]
    for i in range(0, len(events), 10_000):
        _batch(api, events[i : i + 10_000])
    _wait_views(api, "big", 40_000)

    # Then the estimate is within 2% of 20,000 (the HLL's standard error is 0.81%), and exactly Redis's
    # own estimate of those 20,000 users (the HLL is deterministic: no user lost, none of the others added)
    all_time, today = _uniques(api, "big")
    assert abs(all_time - 20_000) <= 400, all_time
    with redis.Redis.from_url(migrated.redis_url) as client:
        client.pfadd("test:expected-viewers", *users)
        assert all_time == client.pfcount("test:expected-viewers")
        client.delete("test:expected-viewers")
    assert today == all_time  # one day, the same users

    # And the flusher writes the same figure to Postgres, for today and all time
    assert api.stop() == 0
    run_flusher_once(migrated)
    assert _daily(migrated.database_url) == {("big", date(2026, 2, 1)): all_time}
    assert _all_time(migrated.database_url) == {"big": all_time}


def test_views_without_a_user_and_playback_signals_leave_the_hlls_unchanged(api: ApiProcess) -> None:
    # Given three users who viewed an item
    for user in ("a", "b", "c"):
        _view(api, "anon-1", user)
    _wait_views(api, "anon-1", 3)
    assert _uniques(api, "anon-1") == (3, 3)

    # When anonymous single views, batch items without user_id, and playback signals of new users
    # (single and in a batch) arrive
    for _ in range(5):
        _view(api, "anon-1")
    _view(api, "anon-1", "d", {"event_type": "media_completed"})
    _view(api, "anon-1", "e", {"event_type": "media_skipped", "watch_seconds": 3})
    _batch(
        api,
        [{"content_id": "anon-1"}, {"content_id": "anon-1", "watch_seconds": 4}]
        + [{"content_id": "anon-1", "user_id": "f", "event_type": "media_replay"}],
    )

    # Then the views count but the unique viewers do not move
    _wait_views(api, "anon-1", 10)
    assert _uniques(api, "anon-1") == (3, 3)
    # and an item seen only anonymously has no unique viewers at all
    _view(api, "anon-2")
    _wait_views(api, "anon-2", 1)
    assert _uniques(api, "anon-2") == (0, 0)


def test_unique_viewers_today_starts_over_on_a_new_utc_day(
    start_api: Callable[..., ApiProcess], migrated: Settings
) -> None:
    # Given users a, b, c viewing on 1 March (the day pinned by setting, not by waiting)
    day1 = start_api(migrated.replace(unique_viewers_day="2026-03-01"))
    for user in ("a", "b", "c"):
        _view(day1, "daily-1", user)
    _wait_views(day1, "daily-1", 3)
    assert day1.stop() == 0
    run_flusher_once(migrated)

    # When c and d view on 2 March
    day2 = start_api(migrated.replace(unique_viewers_day="2026-03-02"))
    _batch(day2, [{"content_id": "daily-1", "user_id": u} for u in ("c", "d", "d")])
    _wait_views(day2, "daily-1", 6)

    # Then today counts that day's users and all time counts everyone once
    assert _uniques(day2, "daily-1") == (4, 2)
    assert day2.stop() == 0

    # And Postgres holds one figure per day and the all-time figure
    flushed = time.monotonic()
    run_flusher_once(migrated)
    assert _daily(migrated.database_url) == {
        ("daily-1", date(2026, 3, 1)): 3,
        ("daily-1", date(2026, 3, 2)): 2,
    }
    assert _all_time(migrated.database_url) == {"daily-1": 4}

    # And the daily HLLs expire, and so does the all-time one once Postgres holds it
    # (a cold key: Postgres keeps the HLL and Redis loads it again when the item is viewed)
    shard = keys.shard_of("daily-1", migrated.shards)
    # (given by that flush: their full lifetime less the time since it began, within 10 ms of clock skew)
    with redis.Redis.from_url(migrated.redis_url) as client:
        day_ttl = client.pttl(keys.uv_day_key(shard, "20260302", "daily-1"))
        all_ttl = client.pttl(keys.uv_key(shard, "daily-1"))
        since_ms = (time.monotonic() - flushed) * 1000 + 10
    assert (
        migrated.unique_viewers_daily_ttl_s * 1000 - since_ms
        <= day_ttl
        <= migrated.unique_viewers_daily_ttl_s * 1000
    )
    assert migrated.counts_idle_ttl_s * 1000 - since_ms <= all_ttl <= migrated.counts_idle_ttl_s * 1000


def test_stats_read_unique_viewers_from_postgres_when_redis_has_no_counts(
    start_api: Callable[..., ApiProcess], migrated: Settings
) -> None:
    # Given today's unique viewers flushed to Postgres, then Redis emptied
    api = start_api(migrated)
    for user in ("a", "b"):
        _view(api, "pg-1", user)
    _wait_views(api, "pg-1", 2)
    run_flusher_once(migrated)
    with redis.Redis.from_url(migrated.redis_url) as client:
        client.flushall()

    # Then the stats come from Postgres, unique viewers included
    response = api.client.get("/api/v1/content/pg-1/stats")
    assert response.headers["X-Counts-Source"] == "postgres"
    assert (
        response.json()["views"],
        response.json()["unique_viewers"],
        response.json()["unique_viewers_today"],
    ) == (
        2,
        2,
        2,
    )


@pytest.fixture
async def store(migrated: Settings) -> AsyncIterator[Store]:
    """A store over the test's Redis and Postgres (a drain of an item Redis does not hold loads it)."""
    client = make_redis(migrated)
    pool = await db.create_pool(migrated)
    try:
        yield Store(migrated, client, Scripts.load(), db.provided(pool), Metrics())
    finally:
        await client.aclose()
        await pool.close()


@pytest.fixture
def client(store: Store) -> aioredis.Redis:
    return store.redis


async def test_a_retried_drain_changes_no_hll_and_touches_nothing_again(
    store: Store, client: aioredis.Redis, migrated: Settings
) -> None:
    # Given a drain with user ids applied once
    shard = keys.shard_of("retry-1", migrated.shards)
    touched = (keys.uv_touch_key(shard), keys.uv_all_touch_key(shard))
    drain = Drain(
        shard, "retry-test", 1, {"retry-1": 3}, {}, viewers={"retry-1": ["a", "b", "c"]}, day="20260401"
    )
    assert await store.apply_drains([drain.call(migrated)], [drain.needed]) == [1]
    with redis.Redis.from_url(migrated.redis_url) as raw:  # HLL bytes, not text
        hll = raw.get(keys.uv_key(shard, "retry-1"))
    assert await client.smembers(keys.uv_touch_key(shard)) == {"20260401:retry-1"}
    assert await client.smembers(keys.uv_all_touch_key(shard)) == {"retry-1"}
    await client.delete(*touched)  # as if the flusher had written them

    # When the same drain is retried (its reply was lost)
    assert await store.apply_drains([drain.call(migrated)], [drain.needed]) == [0]

    # Then nothing changed: counts, HLL bytes, and no item to flush again
    assert await client.hget(keys.counts_key(shard, "retry-1"), "views") == "3"
    with redis.Redis.from_url(migrated.redis_url) as raw:
        assert raw.get(keys.uv_key(shard, "retry-1")) == hll
    assert await client.pfcount(keys.uv_day_key(shard, "20260401", "retry-1")) == 3
    assert await client.exists(*touched) == 0

    # And a new drain with users already counted changes no HLL, so it touches nothing either
    again = Drain(shard, "retry-test", 2, {"retry-1": 1}, {}, viewers={"retry-1": ["b"]}, day="20260401")
    assert await store.apply_drains([again.call(migrated)], [again.needed]) == [1]
    assert await client.hget(keys.counts_key(shard, "retry-1"), "views") == "4"
    assert await client.exists(*touched) == 0


async def test_a_flush_interrupted_before_forgetting_its_members_is_written_again_exactly(
    store: Store, client: aioredis.Redis, migrated: Settings
) -> None:
    # Given items whose HLLs changed, captured by a flusher that died before its Postgres write
    buffer = ViewBuffer(migrated.replace(unique_viewers_day="2026-04-02"), store, Metrics())
    for i in range(30):
        assert buffer.add(f"int-{i % 3}", 0, f"user-{i}")
    assert await buffer.drain_once()
    captured = await uniques.capture(store, range(migrated.shards))
    assert sorted(uniques_members(captured)) == [f"20260402:int-{i}" for i in range(3)]
    assert sorted(all_time_members(captured)) == [f"int-{i}" for i in range(3)]

    # When the flusher runs again (twice)
    pool = await db.create_pool(migrated)
    try:
        assert await uniques.flush_uniques(store, pool) == (3, True)
        assert await uniques.flush_uniques(store, pool) == (0, True)
        rows = await pool.fetch("SELECT content_id, day, unique_viewers FROM content_unique_viewers_daily")
        all_time = await pool.fetch("SELECT content_id, unique_viewers FROM content_unique_viewers")
    finally:
        await pool.close()

    # Then each item's figure is there once, and nothing is left to flush
    assert {(r["content_id"], r["day"]): r["unique_viewers"] for r in rows} == {
        (f"int-{i}", date(2026, 4, 2)): 10 for i in range(3)
    }
    assert {r["content_id"]: r["unique_viewers"] for r in all_time} == {f"int-{i}": 10 for i in range(3)}
    for shard in range(migrated.shards):
        sets = (keys.uv_touch_key(shard), keys.uv_batch_key(shard))
        sets += (keys.uv_all_touch_key(shard), keys.uv_all_batch_key(shard))
        assert await client.exists(*sets) == 0


def uniques_members(captured: uniques.Captured) -> list[str]:
    """The daily HLL members ("<yyyymmdd>:<content_id>") a capture took."""
    return [m for daily, _ in captured.members.values() for m in daily]


def all_time_members(captured: uniques.Captured) -> list[str]:
    """The content ids of all-time HLLs a capture took."""
    return [c for _, all_time in captured.members.values() for c in all_time]


async def test_user_ids_beyond_the_per_item_cap_are_counted_as_dropped_not_kept(
    store: Store, client: aioredis.Redis, migrated: Settings
) -> None:
    # Given a buffer keeping at most 4 user ids per item per drain
    settings = migrated.replace(buffer_viewers_max_per_item=4, unique_viewers_day="2026-04-03")
    buffer = ViewBuffer(settings, store, Metrics())

    # When 6 users view one item in single views and 6 in a batch before a drain, and one user twice
    for u in range(6):
        assert buffer.add("cap-1", 0, f"s-{u}")
    assert buffer.add("cap-1", 0, "s-0")
    assert buffer.add_many(["cap-2"] * 6, [], [], viewers=(["cap-2"] * 6, [f"b-{u}" for u in range(6)]))
    assert await buffer.drain_once()

    # Then every view counts, the HLLs hold 4 users each, and the 4 left out are counted
    shard1, shard2 = keys.shard_of("cap-1", settings.shards), keys.shard_of("cap-2", settings.shards)
    assert await client.hget(keys.counts_key(shard1, "cap-1"), "views") == "7"
    assert await client.hget(keys.counts_key(shard2, "cap-2"), "views") == "6"
    assert await client.pfcount(keys.uv_key(shard1, "cap-1")) == 4
    assert await client.pfcount(keys.uv_key(shard2, "cap-2")) == 4
    assert buffer.viewers_dropped == 4
    assert b"engagement_unique_viewers_dropped_total 4.0" in buffer._metrics.render()


async def test_batches_whose_every_view_has_a_user_count_each_view_once_also_when_folded_early(
    store: Store, client: aioredis.Redis, migrated: Settings
) -> None:
    # Given a buffer that folds its queue early (past 50 queued entries), and batches whose every view
    # has a user id (the views are then counted with the user ids, not apart), one batch where only
    # some views have one, and a single view
    settings = migrated.replace(buffer_max_items=50, unique_viewers_day="2026-04-04")
    buffer = ViewBuffer(settings, store, Metrics())
    ids = [f"every-{i % 3}" for i in range(30)]
    users = [f"u-{i % 2}" for i in range(30)]

    # When they are added: the second batch goes past 50 and folds the first one
    assert buffer.add_many(ids, [], [], viewers=(ids, users))
    assert (buffer.pending_views(), buffer.depth()) == (30, 3)
    second = list(ids)
    assert buffer.add_many(second, [], [], viewers=(second, users))
    some = [f"every-{i % 3}" for i in range(9)]
    assert buffer.add_many(some, [], [], viewers=(some[:3], ["x-0", "x-1", "x-2"]))
    assert buffer.add("every-0", 0, "s-0")
    assert (buffer.pending_views(), buffer.depth()) == (70, 3)
    assert await buffer.drain_once()

    # Then every view counted once, and each item's viewers are exactly the users it had
    for n, views, viewers in ((0, 24, 4), (1, 23, 3), (2, 23, 3)):
        shard = keys.shard_of(f"every-{n}", settings.shards)
        assert await client.hget(keys.counts_key(shard, f"every-{n}"), "views") == str(views)
        assert await client.pfcount(keys.uv_key(shard, f"every-{n}")) == viewers
    assert (buffer.pending_views(), buffer.depth(), buffer.viewers_dropped) == (0, 0, 0)


async def test_while_redis_is_down_queued_user_ids_stay_capped_and_every_view_counts_after(
    migrated: Settings, tmp_path: Path
) -> None:
    # Given a buffer on a private Redis (at most 20 user ids per item per drain, folded past 50
    # queued entries), and that Redis stopped
    with RedisServer(tmp_path / "down-redis", appendonly=False) as server:
        settings = migrated.replace(
            redis_url=server.url,
            buffer_max_items=50,
            buffer_viewers_max_per_item=20,
            unique_viewers_day="2026-04-05",
        )
        client = make_redis(settings)
        pool = await db.create_pool(settings)
        try:
            buffer = ViewBuffer(
                settings, Store(settings, client, Scripts.load(), db.provided(pool), Metrics()), Metrics()
            )
            server.stop()

            # When 10 batches of 30 views by distinct users of one item arrive, a drain failing
            # between each (every view has a user id: the views travel with the user ids)
            for b in range(10):
                ids = ["down-1"] * 30
                assert buffer.add_many(ids, [], [], viewers=(ids, [f"u-{b}-{i}" for i in range(30)]))
                assert not await buffer.drain_once()

            # Then the buffer holds the item's 300 views but 40 user ids: 20 in the drain it retries,
            # 20 queued; the other 260 are counted dropped
            assert (buffer.pending_views(), buffer.depth()) == (300, 2)
            assert buffer.viewers_dropped == 260

            # And while Redis is still down, batches arriving between two retries are folded as they
            # come (at the buffer's bound check), not kept whole until the next retry
            for b in range(3):
                ids = ["down-1"] * 30
                assert buffer.add_many(ids, [], [], viewers=(ids, [f"v-{b}-{i}" for i in range(30)]))
            assert buffer.viewers_dropped == 320  # the first two batches; the third waits for a fold

            # And once Redis is back, every view counts once and the HLL holds the 40 kept
            server.restart()
            assert await buffer.drain_once()
            assert (buffer.pending_views(), buffer.viewers_dropped) == (0, 350)
            shard = keys.shard_of("down-1", settings.shards)
            assert await client.hget(keys.counts_key(shard, "down-1"), "views") == "390"
            assert await client.pfcount(keys.uv_key(shard, "down-1")) == 40
        finally:
            await client.aclose()
            await pool.close()


@pytest.mark.slow
def test_unique_viewers_on_a_redis_cluster(redis_cluster: RedisClusterServers, migrated: Settings) -> None:
    # Given the api and the flusher on a three-master Redis Cluster, 64 shards over its slots
    settings = migrated.replace(
        redis_url=redis_cluster.url, redis_cluster=True, shards=64, unique_viewers_day="2026-05-01"
    )
    with redis.RedisCluster.from_url(redis_cluster.url) as cluster:
        cluster.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    api = ApiProcess(settings)
    try:
        # When 7 users view each of 40 items twice (single views and a batch)
        for i in range(40):
            for u in range(7):
                _view(api, f"cl-{i}", f"u-{u}")
        _batch(api, [{"content_id": f"cl-{i}", "user_id": f"u-{u}"} for i in range(40) for u in range(7)])

        # Then every item has 7 unique viewers, read from its slot
        wait_until(lambda: all(_stats(api, f"cl-{i}")["views"] == 14 for i in range(40)), what="drains")
        assert {i: _uniques(api, f"cl-{i}") for i in range(40)} == {i: (7, 7) for i in range(40)}
        assert api.stop() == 0
    finally:
        api.kill()

    # And the flusher, on the cluster too, writes the daily and all-time figures
    run_flusher_once(settings)
    assert _daily(settings.database_url) == {(f"cl-{i}", date(2026, 5, 1)): 7 for i in range(40)}
    assert _all_time(settings.database_url) == {f"cl-{i}": 7 for i in range(40)}
