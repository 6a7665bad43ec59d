"""Redis as a hot set over Postgres (docs/redis-memory.md): a copy Redis no longer holds is loaded from
Postgres, never guessed; a changed key keeps no TTL until the flush that has its change; drain marks
and records cost memory per process and shard, not per operation."""

from __future__ import annotations

from cold_fixtures import Stack

from daemon import db, keys, redis_memory
from daemon.store import Store, cold
from daemon.views.buffer import ViewBuffer
from daemon.views.drains import Drain


async def test_a_like_on_a_pair_redis_no_longer_holds_is_loaded_from_postgres_and_counts_once(
    stack: Stack,
) -> None:
    # Given u1 likes a, flushed to Postgres
    assert (await stack.store.set_reaction("a", "u1", "like", ""))[:3] == ["changed", 1, 1]
    await stack.flusher().drain()
    s = stack.shard("a")
    like, counts = keys.like_key(s, "a", "u1"), keys.counts_key(s, "a")
    # When Redis forgets the state and the counts (as an eviction would)
    assert await stack.redis.delete(like, counts) == 2
    loads = (stack.loads("like"), stack.loads("counts"))

    # Then liking again is answered from Postgres: unchanged, one like, one Postgres read of each
    assert await stack.store.set_reaction("a", "u1", "like", "") == ["unchanged", 1, 1, 0]
    assert (stack.loads("like") - loads[0], stack.loads("counts") - loads[1]) == (1, 1)
    # and switching to a dislike moves both counts exactly once
    assert await stack.store.set_reaction("a", "u1", "dislike", "") == ["changed", -1, 0, 1]
    await stack.flusher().drain()
    assert await stack.pool.fetchval("SELECT value FROM likes WHERE content_id = 'a'") == -1
    row = await stack.pool.fetchrow("SELECT likes, dislikes FROM content_counters WHERE content_id = 'a'")
    assert tuple(row) == (0, 1)


async def test_a_changed_key_has_no_ttl_until_the_flush_that_has_its_change(stack: Stack) -> None:
    s = stack.shard("a")
    like, counts = keys.like_key(s, "a", "u1"), keys.counts_key(s, "a")
    # Given a like, and a flusher that captured it
    await stack.store.set_reaction("a", "u1", "like", "")
    assert (await stack.redis.ttl(like), await stack.redis.ttl(counts)) == (-1, -1)
    flusher = stack.flusher()
    batches = await flusher.capture()
    # When the pair changes again before that batch is finished
    await stack.store.set_reaction("a", "u1", "unlike", "")
    async with stack.pool.acquire() as conn:
        from flusher.writer import write_batches

        await write_batches(conn, batches)
    await flusher.finish(batches)
    # Then the keys still carry no TTL: Postgres does not have the unlike yet
    assert (await stack.redis.ttl(like), await stack.redis.ttl(counts)) == (-1, -1)
    # And once it has, both get their idle lifetime
    await flusher.drain()
    assert 0 < await stack.redis.ttl(like) <= stack.settings.state_idle_ttl_s
    assert 0 < await stack.redis.ttl(counts) <= stack.settings.counts_idle_ttl_s
    assert await stack.redis.scard(keys.dirty_key(s)) == 0


async def test_a_seed_read_before_another_load_changed_and_flushed_the_key_is_refused(stack: Stack) -> None:
    # Given Postgres says u1 likes a, and Redis holds nothing of it
    await stack.pool.execute("INSERT INTO likes (user_id, content_id, value) VALUES ('u1', 'a', 1)")
    await stack.pool.execute("INSERT INTO content_counters (content_id, likes) VALUES ('a', 1)")
    script_keys, args = stack.store._reaction("a", "u1", "like", "")
    script = stack.store.scripts.set_reaction
    answer = await script(stack.redis, script_keys, [*args, ""])
    assert answer[0] == "unknown"
    unknown = cold.unknown_of(answer)
    assert unknown is not None and sorted(unknown.names) == sorted(script_keys[:2])
    stale = stack.store.loader.pack(unknown.tokens, await stack.store.loader.values(unknown.names))
    # When another caller loads the pair, unlikes, the flusher commits it and Redis evicts the keys
    assert await stack.store.set_reaction("a", "u1", "unlike", "") == ["changed", 0, 0, 0]
    await stack.flusher().drain()
    assert await stack.redis.delete(*script_keys[:2]) == 2
    # Then the first caller's seed (still "liked") is refused: the pair is unknown again
    again = await script(stack.redis, script_keys, [*args, stale])
    assert again[0] == "unknown" and cold.unknown_of(again).tokens != unknown.tokens
    # and a fresh load answers from Postgres as it is now
    assert await stack.store.set_reaction("a", "u1", "like", "") == ["changed", 1, 1, 0]


async def test_views_of_an_item_redis_forgot_add_to_its_postgres_count(stack: Stack) -> None:
    buffer = stack.buffer()
    for _ in range(3):
        assert buffer.add("a", 10)
    assert await buffer.drain_once()
    await stack.flusher().drain()
    counts = keys.counts_key(stack.shard("a"), "a")
    assert await stack.redis.delete(counts) == 1
    for _ in range(2):
        assert buffer.add("a", 5)
    assert await buffer.drain_once()
    assert await stack.redis.hmget(counts, "views", "watch_seconds") == ["5", "40"]
    await stack.flusher().drain()
    row = await stack.pool.fetchrow(
        "SELECT views, watch_seconds FROM content_counters WHERE content_id = 'a'"
    )
    assert tuple(row) == (5, 40)


async def test_unique_viewers_hlls_redis_forgot_are_loaded_back_before_new_viewers_join(stack: Stack) -> None:
    # Given u1 and u2 viewed a, flushed (Postgres holds both HLLs)
    buffer = stack.buffer()
    for user in ("u1", "u2"):
        assert buffer.add("a", 0, user)
    assert await buffer.drain_once()
    await stack.flusher().drain()
    s, day = stack.shard("a"), "20261207"
    hlls = [keys.uv_key(s, "a"), keys.uv_day_key(s, day, "a")]
    assert [0 < t <= stack.settings.counts_idle_ttl_s for t in [await stack.redis.ttl(hlls[0])]] == [True]
    # When Redis forgets both HLLs, and u2 and u3 view it
    assert await stack.redis.delete(*hlls) == 2
    for user in ("u2", "u3"):
        assert buffer.add("a", 0, user)
    assert await buffer.drain_once()
    # Then the HLLs hold the union, in Redis and in Postgres after the flush
    assert [await stack.redis.pfcount(h) for h in hlls] == [3, 3]
    await stack.flusher().drain()
    assert await stack.pool.fetchval("SELECT unique_viewers FROM content_unique_viewers") == 3
    assert await stack.pool.fetchval("SELECT unique_viewers FROM content_unique_viewers_daily") == 3
    # And an HLL of a new day starts empty without a Postgres read
    loads = stack.loads("viewers")
    settings = stack.settings.replace(unique_viewers_day="2026-12-08")
    next_day = ViewBuffer(
        settings,
        Store(settings, stack.redis, stack.store.scripts, db.provided(stack.pool), stack.metrics),
        stack.metrics,
    )
    assert next_day.add("a", 0, "u4")
    assert await next_day.drain_once()
    assert stack.loads("viewers") == loads
    assert await stack.redis.pfcount(keys.uv_day_key(s, "20261208", "a")) == 1


def _drain(stack: Stack, process: str, seq: int, views: dict[str, int]) -> Drain:
    shard = stack.shard(next(iter(views)))
    return Drain(shard, process, seq, views, {}, {}, {}, "20261207")


async def test_a_retried_drain_counts_once_and_marks_cost_one_record_per_process_and_shard(
    stack: Stack,
) -> None:
    store, settings = stack.store, stack.settings
    drains = [_drain(stack, "p1", seq, {"a": seq}) for seq in range(1, 6)]
    # Applied out of order (3 before 2), then every one retried
    order = [drains[0], drains[2], drains[1], drains[4], drains[3]]
    results = await store.apply_drains([d.call(settings) for d in order], [d.needed for d in order])
    assert results == [1, 1, 1, 1, 1]
    retried = await store.apply_drains([d.call(settings) for d in drains], [d.needed for d in drains])
    assert retried == [0, 0, 0, 0, 0]
    s = stack.shard("a")
    assert await stack.redis.hget(keys.counts_key(s, "a"), "views") == str(1 + 2 + 3 + 4 + 5)
    marks = {k: v for k, v in (await stack.redis.hgetall(keys.rec_key(s))).items() if k.startswith("d:")}
    assert marks == {"d:p1": "5"}
    # A gap is remembered until it closes
    await store.apply_drains([_drain(stack, "p1", 7, {"a": 7}).call(settings)], [{}])
    assert await stack.redis.hget(keys.rec_key(s), "d:p1") == "5,7"
    await store.apply_drains([_drain(stack, "p1", 6, {"a": 6}).call(settings)], [{}])
    assert await stack.redis.hget(keys.rec_key(s), "d:p1") == "7"
    assert await stack.redis.hget(keys.counts_key(s, "a"), "views") == str(sum(range(1, 8)))


async def test_records_past_their_lifetime_are_swept(stack: Stack) -> None:
    settings = stack.settings.replace(idempotency_ttl_s=1)
    store = Store(settings, stack.redis, stack.store.scripts, db.provided(stack.pool), stack.metrics)
    await store.set_reaction("a", "u1", "like", "key-1")
    s = stack.shard("a")
    record = keys.like_record("a", "u1", "key-1")
    assert await stack.redis.hexists(keys.rec_key(s), record)
    assert await store.sweep_records() == 0  # not expired yet
    # Expire it as the clock would, then sweep
    await stack.redis.zadd(keys.recexp_key(s), {record: 1})
    assert await store.sweep_records() == 1
    assert not await stack.redis.hexists(keys.rec_key(s), record)
    assert await stack.redis.zcard(keys.recexp_key(s)) == 0


async def test_the_flush_lease_and_pending_data_carry_no_ttl(stack: Stack) -> None:
    await stack.store.set_reaction("a", "u1", "like", "key-1")
    buffer = stack.buffer()
    assert buffer.add("b", 3, "u1")
    assert await buffer.drain_once()
    flusher = stack.flusher()
    await flusher.capture()  # holds the leases of the shards it captured
    volatile, trending = [], []
    async for name in stack.redis.scan_iter(match="eng:*"):
        ttl = await stack.redis.ttl(name)
        if ttl != -1:
            (trending if redis_memory.key_kind(name) == "trending" else volatile).append(name)
    # Only cold keys can carry a TTL (and trending buckets, which hold nothing Postgres needs); nothing
    # here was flushed yet, so no cold key has one
    assert volatile == []
    assert len(trending) == 2  # b's 5-minute and hourly buckets


async def test_seeds_are_ttl_bounded_and_a_read_of_an_unknown_item_costs_one_load(stack: Stack) -> None:
    (item,) = await stack.store.read_items(["zz"], "u1", "20261207")
    assert (item.counts, item.state, item.unique_viewers, item.unique_viewers_today) == (
        None,
        None,
        None,
        None,
    )
    values = await stack.store.loader.values([keys.counts_key(stack.shard("zz"), "zz")])
    await stack.store.seed(item.tokens, values)
    (item,) = await stack.store.read_items(["zz"], None, "20261207")
    assert item.counts == {"views": 0}
    assert (
        0
        < await stack.redis.ttl(keys.counts_key(stack.shard("zz"), "zz"))
        <= stack.settings.counts_idle_ttl_s
    )
    # and the load's placeholder went with the seed (the like state's, not seeded, waits its minute)
    placeholders = [k for k in await stack.redis.hkeys(keys.rec_key(stack.shard("zz"))) if k.startswith("l:")]
    assert placeholders == ["l:" + keys.like_key(stack.shard("zz"), "zz", "u1")]
