"""Pending view increments as one list entry per drain (``eng:{s:N}:vdelta``): summed exactly by the
flusher and by reconcile, bounded (past ENGAGEMENT_VIEW_DELTA_MAX_DRAINS the delta hash takes over),
and drains journaled in the earlier layout (3 or 4 keys) still apply once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
import msgpack
import pytest
import redis
import redis.asyncio as aioredis
from service_fixtures import ApiProcess, fetch, run_flusher_once, token, wait_until

from daemon import db, keys
from daemon.metrics import Metrics
from daemon.reconcile import reconcile
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from daemon.store.upgrade import journaled_calls
from daemon.views.buffer import ViewBuffer
from daemon.views.drains import read_drains, unpack
from flusher.flusher import Flusher
from flusher.writer import write_batches
from lua import Scripts


@dataclass
class Stack:
    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool
    scripts: Scripts
    store: Store
    buffer: ViewBuffer

    def shard(self, content_id: str) -> int:
        return keys.shard_of(content_id, self.settings.shards)

    async def drain(
        self, views: dict[str, tuple[int, int]], completions: dict[str, int] | None = None
    ) -> None:
        """One drain: content_id -> (views, watch seconds of the first view), and completions."""
        for content_id, (n, watch) in views.items():
            for i in range(n):
                assert self.buffer.add(content_id, watch if i == 0 else 0)
        for content_id, n in (completions or {}).items():
            for _ in range(n):
                assert self.buffer.add_signal("completions", content_id)
        assert await self.buffer.drain_once()

    async def postgres(self) -> dict[str, tuple[int, int, int]]:
        rows = await self.pool.fetch(
            "SELECT content_id, views, watch_seconds, completions FROM content_counters"
        )
        return {r["content_id"]: (r["views"], r["watch_seconds"], r["completions"]) for r in rows}

    async def daily(self) -> dict[tuple[str, str], tuple[int, int]]:
        rows = await self.pool.fetch("SELECT content_id, day, views, watch_seconds FROM content_daily")
        return {
            (r["content_id"], r["day"].strftime("%Y%m%d")): (r["views"], r["watch_seconds"]) for r in rows
        }

    @property
    def day(self) -> str:
        """The UTC day the buffer cuts drains with (pinned in this file's settings)."""
        return keys.uv_day(self.settings.unique_viewers_day)

    async def live(self, counter: str, content_id: str) -> int:
        value = await self.redis.hget(keys.counts_key(self.shard(content_id), content_id), counter)
        return int(value or 0)

    async def flush(self) -> None:
        await Flusher(self.settings, self.redis, self.pool, self.scripts, Metrics()).drain()


async def _stack(settings: Settings) -> AsyncIterator[Stack]:
    settings = settings.replace(unique_viewers_day=settings.unique_viewers_day or "2026-12-07")
    client = make_redis(settings)
    pool = await db.create_pool(settings)
    scripts = Scripts.load()
    metrics = Metrics()
    store = Store(settings, client, scripts, db.provided(pool), metrics)
    try:
        yield Stack(settings, client, pool, scripts, store, ViewBuffer(settings, store, metrics))
    finally:
        await client.aclose()
        await pool.close()


@pytest.fixture
async def stack(migrated: Settings) -> AsyncIterator[Stack]:
    async for s in _stack(migrated):
        yield s


@pytest.fixture
async def bounded(migrated: Settings) -> AsyncIterator[Stack]:
    """At most two drains per shard kept as list entries."""
    async for s in _stack(migrated.replace(view_delta_max_drains=2)):
        yield s


async def test_each_drain_is_one_list_entry_and_the_flusher_sums_them_exactly(stack: Stack) -> None:
    # Given three drains of views, watch seconds and completions, two of them touching the same items
    await stack.drain({"a": (3, 30), "b": (1, 0)}, completions={"a": 1})
    await stack.drain({"a": (2, 5)})
    await stack.drain({"a": (1, 0), "b": (4, 40)}, completions={"b": 2})

    # Then each drain is one entry of its shard's list, the delta hash holds nothing, live counts are exact
    shard_a, shard_b = stack.shard("a"), stack.shard("b")
    entries = {shard_a: 0, shard_b: 0}
    for drain_items in ({"a", "b"}, {"a"}, {"a", "b"}):
        for shard in {stack.shard(item) for item in drain_items}:
            entries[shard] += 1
    for shard, n in entries.items():
        assert await stack.redis.llen(keys.vdelta_key(shard)) == n
        assert await stack.redis.exists(keys.delta_key(shard)) == 0
    assert [await stack.live(c, "a") for c in ("views", "watch_seconds", "completions")] == [6, 35, 1]
    assert [await stack.live(c, "b") for c in ("views", "watch_seconds", "completions")] == [5, 40, 2]

    # When the flusher runs
    await stack.flush()

    # Then Postgres holds the exact sums and the lists are gone
    assert await stack.postgres() == {"a": (6, 35, 1), "b": (5, 40, 2)}
    assert await stack.redis.exists(keys.vdelta_key(shard_a), keys.vbatch_key(shard_a)) == 0
    assert await stack.redis.exists(keys.vdelta_key(shard_b), keys.vbatch_key(shard_b)) == 0


async def test_past_the_limit_a_drain_goes_to_the_delta_hash_and_nothing_is_lost(bounded: Stack) -> None:
    # Given five drains of one item while the limit is two drains per shard
    for n in (1, 2, 3, 4, 5):
        await bounded.drain({"a": (n, n * 10)})

    # Then the list stopped at two and the delta hash holds the other three drains' increments
    shard = bounded.shard("a")
    assert await bounded.redis.llen(keys.vdelta_key(shard)) == 2
    day = bounded.day
    assert await bounded.redis.hgetall(keys.delta_key(shard)) == {
        "views:a": "12",
        "watch_seconds:a": "120",
        f"dv:{day}:a": "12",  # the day's counts too (content_daily)
        f"dw:{day}:a": "120",
    }
    assert await bounded.live("views", "a") == 15

    # When the flusher runs, and more drains arrive after it
    await bounded.flush()
    await bounded.drain({"a": (6, 0)})
    await bounded.flush()

    # Then Postgres holds every view once, and the list took entries again once emptied; the day's too
    assert await bounded.postgres() == {"a": (21, 150, 0)}
    assert await bounded.daily() == {("a", day): (21, 150)}


async def test_with_the_limit_at_zero_every_increment_goes_to_the_delta_hash(migrated: Settings) -> None:
    async for stack in _stack(migrated.replace(view_delta_max_drains=0)):
        await stack.drain({"a": (2, 20)}, completions={"a": 1})
        await stack.drain({"a": (1, 0)})
        shard = stack.shard("a")
        assert await stack.redis.exists(keys.vdelta_key(shard)) == 0
        assert await stack.redis.hgetall(keys.delta_key(shard)) == {
            "views:a": "3",
            "watch_seconds:a": "20",
            "completions:a": "1",
            f"dv:{stack.day}:a": "3",
            f"dw:{stack.day}:a": "20",
        }
        await stack.flush()
        assert await stack.postgres() == {"a": (3, 20, 1)}
        assert await stack.daily() == {("a", stack.day): (3, 20)}


async def test_a_drain_journaled_by_an_earlier_version_still_applies_once(stack: Stack) -> None:
    # Given drains in the layout of a consumer journal written before the list existed: three keys
    # (views and watch seconds only), and four keys with user ids for the unique viewers (key layout 1:
    # a live hash and a marker key per drain, whose names daemon.keys no longer builds)
    shard = stack.shard("old")
    ttl = stack.settings.drain_marker_ttl_s
    live, tag = f"{keys.tag(shard)}:live", keys.tag(shard)
    plain = (
        [live, keys.delta_key(shard), f"{tag}:drain:old-1"],
        [ttl, msgpack.packb({"old": 2}), msgpack.packb({"old": 7})],
    )
    viewers = (
        [live, keys.delta_key(shard), f"{tag}:drain:old-2", keys.uv_touch_key(shard)],
        [
            ttl,
            msgpack.packb({"old": 3}),
            msgpack.packb({}),
            msgpack.packb({}),
            msgpack.packb({"old": ["u1", "u2", "u3"]}),
            keys.tag(shard),
            "20261122",
            3600,
        ],
    )

    # When they are applied, and applied again (a retry), as a consumer recovering the journal does
    async def apply() -> list[object]:
        calls = await journaled_calls(stack.store, [plain, viewers])
        return await stack.store.apply_drains(calls, [{}] * len(calls))

    assert await apply() == [1, 1]
    # (the retry is recognised by the drain marks in the shard's records, not by the old marker keys)
    assert await apply() == [0, 0]
    assert await stack.redis.hget(keys.rec_key(shard), "d:v1:old-1") == "1"
    assert await stack.redis.hget(keys.rec_key(shard), "d:v1:old-2") == "1"

    # Then their increments are pending once, and the unique viewers were counted
    # (converted to layout-2 drains, they are entries of the list of view drains like any other)
    assert await stack.redis.exists(keys.delta_key(shard)) == 0
    (pending,) = await read_drains(stack.redis, [keys.vdelta_key(shard)])
    assert [unpack(d) for d in pending] == [
        [("views", {"old": 2}), ("watch_seconds", {"old": 7})],
        [("views", {"old": 3}), ("watch_seconds", {})],
    ]
    assert await stack.live("views", "old") == 5
    assert await stack.redis.pfcount(keys.uv_key(shard, "old")) == 3
    await stack.flush()
    assert await stack.postgres() == {"old": (5, 7, 0)}


@pytest.mark.parametrize("committed", [False, True], ids=["batch-pending", "batch-committed"])
async def test_reconcile_counts_the_pending_drains_and_a_captured_batch_not_yet_committed(
    stack: Stack, committed: bool
) -> None:
    # Given 5 views of a in Postgres, 3 captured by a flusher that died (committed or not), 2 more in the
    # list, and an item z whose only views are pending in the list
    await stack.drain({"a": (5, 0)})
    await stack.flush()
    await stack.drain({"a": (3, 0)})
    crashed = Flusher(stack.settings, stack.redis, stack.pool, stack.scripts, Metrics())
    batches = await crashed.capture()
    assert [b.rows for b in batches] == [{"a": [3, 0, 0, 0, 0, 0, 0, 0, 0]}]
    if committed:
        async with stack.pool.acquire() as conn:
            await write_batches(conn, batches)
    await stack.redis.delete(keys.lease_key(stack.shard("a")))  # as when the crashed flusher's lease expires
    await stack.drain({"a": (2, 0), "z": (4, 0)})

    # When the live values drift (a too high, z lost: 0) and reconcile runs
    # (z's count is set to 0, not deleted: a missing key is unknown and loaded, not repaired)
    await stack.redis.hset(keys.counts_key(stack.shard("a"), "a"), "views", 100)
    await stack.redis.hset(keys.counts_key(stack.shard("z"), "z"), "views", 0)
    report = await reconcile(stack.store, stack.pool)

    # Then both are repaired to Postgres plus what is pending, whichever state the captured batch is in
    assert sorted((r.field, r.was, r.now) for r in report.repairs) == [
        ("views:a", 100, 10),
        ("views:z", 0, 4),
    ]
    assert (await stack.live("views", "a"), await stack.live("views", "z")) == (10, 4)

    # And the next flush writes the pending views once
    await stack.flush()
    assert await stack.postgres() == {"a": (10, 0, 0), "z": (4, 0, 0)}
    assert (await reconcile(stack.store, stack.pool)).drift == 0


def test_over_http_past_the_limit_postgres_gets_every_view_once(
    start_api: Callable[..., ApiProcess], migrated: Settings
) -> None:
    # Given an api that keeps at most one drain per shard in the list, and no flusher running
    settings = migrated.replace(view_delta_max_drains=1, buffer_flush_interval_ms=5)
    api = start_api(settings)
    auth = {"Authorization": f"Bearer {token('viewer')}"}

    def views_of(item: str) -> int:
        r = api.client.get(f"/api/v1/content/{item}/stats", headers=auth)
        assert r.status_code == 200, r.text
        return int(r.json()["views"])

    # When views arrive one drain at a time (each waited for in Redis)
    for n in range(1, 11):
        for item in ("x", "y"):
            r = api.client.post(f"/api/v1/content/{item}/views", json={"watch_seconds": n})
            assert r.status_code == 202, r.text
            wait_until(lambda item=item, n=n: views_of(item) == n, what="the view to reach Redis")

    # Then the first drain of each shard is a list entry and the later nine are in the delta hash
    # (x and y are on different shards: each shard's list holds its item's first drain)
    assert keys.shard_of("x", settings.shards) != keys.shard_of("y", settings.shards)
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        for item in ("x", "y"):
            shard = keys.shard_of(item, settings.shards)
            assert r.llen(keys.vdelta_key(shard)) == 1
            delta = r.hgetall(keys.delta_key(shard))
            assert (delta[keys.field("views", item)], delta[keys.field("watch_seconds", item)]) == (
                "9",
                str(sum(range(2, 11))),
            ), item

    # And after a flush Postgres holds every view and watch second once
    run_flusher_once(settings)
    rows = fetch(settings.database_url, "SELECT content_id, views, watch_seconds FROM content_counters")
    assert {r["content_id"]: (r["views"], r["watch_seconds"]) for r in rows} == {"x": (10, 55), "y": (10, 55)}
