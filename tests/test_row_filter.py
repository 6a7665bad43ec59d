"""The row filter (daemon/store/rows.py, lua/lib/cold.lua): a complete filter lets a first like, a first
subscription or a new item's first view skip the Postgres read; a key Postgres may hold is still loaded;
a filter Redis lost, or one of another size, is built again from Redis and Postgres without ever
calling a key new that Postgres has."""

from __future__ import annotations

import hashlib

from cold_fixtures import Stack

from daemon import keys
from daemon.reconcile import reconcile
from daemon.store.rows import HEADER_BITS, offsets, rows_key


async def _header(stack: Stack, shard: int) -> tuple[int, int]:
    log2, complete = await stack.redis.execute_command(
        "BITFIELD_RO", rows_key(shard), "GET", "u8", 0, "GET", "u8", 8
    )
    return int(log2), int(complete)


async def _has_bits(stack: Stack, name: str) -> bool:
    shard = int(name[name.index("{s:") + 3 : name.index("}")])
    log2, _ = await _header(stack, shard)
    bits = [await stack.redis.getbit(rows_key(shard), o) for o in offsets(name, log2)]
    return all(bits)


async def test_a_first_like_on_a_complete_filter_reads_no_postgres_and_sets_the_pair_bits(
    stack: Stack,
) -> None:
    # Given complete filters (empty Postgres)
    assert await stack.rows().ensure(stack.pool) == stack.settings.shards
    s = stack.shard("a")
    assert await _header(stack, s) == (stack.settings.row_filter_log2, 1)
    like, counts = keys.like_key(s, "a", "u1"), keys.counts_key(s, "a")
    assert not await _has_bits(stack, like)

    # When u1 likes a, an item and a pair Redis never held
    assert (await stack.store.set_reaction("a", "u1", "like", ""))[:3] == ["changed", 1, 1]

    # Then no Postgres read was made, and both keys' bits are set where Python computes them
    assert (stack.loads("like"), stack.loads("counts")) == (0, 0)
    assert await _has_bits(stack, like) and await _has_bits(stack, counts)

    # And once flushed and evicted, the pair is loaded from Postgres, never taken as new: liking again
    # changes nothing
    await stack.flusher().drain()
    assert await stack.redis.delete(like, counts) == 2
    assert (await stack.store.set_reaction("a", "u1", "like", ""))[:3] == ["unchanged", 1, 1]
    assert (stack.loads("like"), stack.loads("counts")) == (1, 1)


async def test_an_unlike_of_a_pair_never_liked_writes_no_state_and_a_like_then_does(stack: Stack) -> None:
    await stack.rows().ensure(stack.pool)
    s = stack.shard("b")
    like, counts, dirty = keys.like_key(s, "b", "u2"), keys.counts_key(s, "b"), keys.dirty_key(s)
    # An unlike of a pair never liked changes nothing: the filter proves the state 0 and none is written
    for _ in range(2):
        assert (await stack.store.set_reaction("b", "u2", "unlike", ""))[:3] == ["unchanged", 0, 0]
    assert await stack.redis.exists(like) == 0
    assert stack.loads("like") == 0
    # the new item's counts were created, pinned, and the next flush gives them their idle TTL
    assert await stack.redis.ttl(counts) == -1
    assert await stack.redis.smismember(dirty, [counts]) == [1]
    await stack.flusher().drain()
    assert 0 < await stack.redis.ttl(counts) <= stack.settings.counts_idle_ttl_s
    assert await stack.pool.fetchval("SELECT count(*) FROM likes") == 0
    # A like then writes the state, pinned, with its bits in the filter, and the flush takes it
    assert (await stack.store.set_reaction("b", "u2", "like", ""))[:3] == ["changed", 1, 1]
    assert await stack.redis.ttl(like) == -1
    assert await stack.redis.smismember(dirty, [like, counts]) == [1, 1]
    await stack.flusher().drain()
    assert await stack.pool.fetchval("SELECT count(*) FROM likes WHERE value = 1") == 1
    assert 0 < await stack.redis.ttl(like) <= stack.settings.state_idle_ttl_s
    # evicted, the state is loaded from Postgres (its bits are set: not taken for new)
    assert await stack.redis.delete(like) == 1
    assert (await stack.store.set_reaction("b", "u2", "like", ""))[:3] == ["unchanged", 1, 1]
    assert stack.loads("like") == 1


async def test_views_and_stats_of_a_new_item_read_no_postgres(stack: Stack) -> None:
    await stack.rows().ensure(stack.pool)
    buffer = stack.buffer()
    for user in ("u1", "u2", "u1"):
        assert buffer.add("v1", 10, user)
    assert await buffer.drain_once()
    assert stack.loads("counts") == 0 and stack.loads("viewers") == 0
    (item,) = await stack.store.read_items(["v1"], "u9", "20261207")
    assert (item.counts["views"], item.unique_viewers, item.state, item.tokens) == (3, 2, 0, {})
    (never,) = await stack.store.read_items(["never-seen"], "u9", "20261207")
    assert (never.counts, never.state, never.tokens) == ({"views": 0}, 0, {})
    assert stack.loads("counts") == 0 and stack.loads("like") == 0
    assert await stack.redis.exists(keys.counts_key(stack.shard("never-seen"), "never-seen")) == 0


async def test_a_lost_filter_is_not_trusted_and_a_rebuild_covers_postgres_rows_and_held_keys(
    stack: Stack,
) -> None:
    # Given a like flushed to Postgres, a pair only Postgres has (as a restore would leave), and a like
    # still pending in Redis, all made while Redis has no filter (it lost it)
    assert (await stack.store.set_reaction("a", "u1", "like", ""))[:3] == ["changed", 1, 1]
    await stack.flusher().drain()
    async with stack.pool.acquire() as conn:
        await conn.execute("INSERT INTO likes (user_id, content_id, value) VALUES ('u7', 'x', 1)")
        await conn.execute("INSERT INTO content_counters (content_id, likes) VALUES ('x', 1)")
    assert (await stack.store.set_reaction("p", "u3", "like", ""))[:3] == ["changed", 1, 1]
    held = keys.like_key(stack.shard("p"), "p", "u3")
    assert stack.loads("like") == 2  # no filter: every missing key is read from Postgres

    # When the filters are built, then the pending like is flushed and every key evicted
    assert sorted(await stack.rows().stale()) == list(range(stack.settings.shards))
    assert await stack.rows().ensure(stack.pool) == stack.settings.shards
    assert await stack.rows().stale() == []
    await stack.flusher().drain()
    assert await _has_bits(stack, held)
    await stack.redis.flushdb()  # every cold key (and the filters) gone...
    assert await stack.rows().ensure(stack.pool) == stack.settings.shards  # ...and built back

    # Then every pair Postgres has is loaded, none is taken as new
    loads = stack.loads("like")
    assert (await stack.store.set_reaction("a", "u1", "like", ""))[:3] == ["unchanged", 1, 1]
    assert (await stack.store.set_reaction("x", "u7", "like", ""))[:3] == ["unchanged", 1, 1]
    assert (await stack.store.set_reaction("p", "u3", "like", ""))[:3] == ["unchanged", 1, 1]
    assert stack.loads("like") == loads + 3


async def test_a_filter_of_another_size_is_rebuilt_and_no_filter_drops_them(stack: Stack) -> None:
    assert (await stack.store.set_reaction("a", "u1", "like", ""))[:3] == ["changed", 1, 1]
    await stack.flusher().drain()
    await stack.rows().ensure(stack.pool)
    s = stack.shard("a")
    before = stack.settings.row_filter_log2

    bigger = stack.settings.replace(row_filter_mb=stack.settings.row_filter_mb * 2)
    stack.settings = bigger
    assert await stack.rows().stale() == list(range(bigger.shards))
    assert await stack.rows().ensure(stack.pool) == bigger.shards
    assert await _header(stack, s) == (before + 1, 1)
    assert await _has_bits(stack, keys.like_key(s, "a", "u1"))  # from the Postgres scan

    stack.settings = bigger.replace(row_filter_mb=0)
    assert len(await stack.rows().stale()) == bigger.shards
    assert await stack.rows().build(stack.pool) == 0
    assert await stack.redis.exists(rows_key(s)) == 0
    assert await stack.rows().stale() == []


async def test_reconcile_sets_the_bits_of_pairs_the_fallback_wrote_to_postgres(stack: Stack) -> None:
    # Given complete filters and a like the api wrote to Postgres alone while Redis was unreachable
    await stack.rows().ensure(stack.pool)
    async with stack.pool.acquire() as conn:
        await conn.execute("INSERT INTO likes (user_id, content_id, value) VALUES ('u5', 'f', 1)")
        await conn.execute("INSERT INTO content_counters (content_id, likes) VALUES ('f', 1)")
        await conn.execute(
            "INSERT INTO fallback_log (kind, user_id, target_id, value) VALUES ('like', 'u5', 'f', 1)"
        )
    s = stack.shard("f")
    assert not await _has_bits(stack, keys.like_key(s, "f", "u5"))

    # When reconcile settles it
    await reconcile(stack.store, stack.pool, stack.metrics, owner="test")

    # Then the pair and the item are known to Postgres: the like is loaded, not taken as new
    assert await _has_bits(stack, keys.like_key(s, "f", "u5"))
    assert await _has_bits(stack, keys.counts_key(s, "f"))
    assert (await stack.store.set_reaction("f", "u5", "like", ""))[:3] == ["unchanged", 1, 1]
    assert stack.loads("like") == 1


def test_offsets_are_five_bits_of_one_512_bit_block_past_the_header() -> None:
    # sha1 of the name: word 0 picks the block (of 2 in 2^10 bits), words 1 and 2 give 9 bits each
    name = "eng:{s:1}:lk:a|u"
    digest = hashlib.sha1(name.encode()).hexdigest()
    w0, w1, w2 = (int(digest[i : i + 8], 16) for i in (0, 8, 16))
    base = HEADER_BITS + (w0 % 2) * 512
    want = (w1 % 512, w1 // 512 % 512, w1 // 512**2 % 512, w2 % 512, w2 // 512 % 512)
    assert offsets(name, 10) == tuple(base + b for b in want)


async def test_a_key_whose_five_positions_repeat_a_bit_is_remembered(stack: Stack) -> None:
    # Given complete filters, and users whose like key on "a" hashes two of its five positions to one
    # bit (about 1 key in 50)
    assert await stack.rows().ensure(stack.pool) == stack.settings.shards
    s, log2 = stack.shard("a"), stack.settings.row_filter_log2
    users = [
        u for u in (f"u{i}" for i in range(2000)) if len(set(offsets(keys.like_key(s, "a", u), log2))) < 5
    ]
    assert users

    # When each likes a (the script sets the bits of a key about to exist)
    for user in users[:5]:
        assert (await stack.store.set_reaction("a", user, "like", ""))[:2] == ["changed", 1]

    # Then the bits are set where Python computes them, none added twice into a neighbour
    for user in users[:5]:
        assert await _has_bits(stack, keys.like_key(s, "a", user))
