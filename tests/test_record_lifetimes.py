"""What lives how long in Redis (docs/redis-memory.md, "Records with a lifetime"): an Idempotency-Key
answer and a drain mark expire exactly ENGAGEMENT_IDEMPOTENCY_TTL_S / ENGAGEMENT_DRAIN_MARKER_TTL_S after
they were written (their score in the shard's ``recexp``, Redis's clock), are honoured until then, and
are removed by the flusher's sweep (``sweep_records.lua``) after, never by a Redis TTL; the consumer
group's offsets carry no TTL and survive every sweep.

Lifetimes are a few seconds here; the tests wait on Redis's clock (``TIME``), the clock the scripts
judge expiry by, never on sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from cold_fixtures import Stack
from consumer_helpers import (
    INGEST,
    ConsumerProcess,
    applied_offsets,
    consumer_settings,
    end_offsets,
    envelope,
    produce,
)
from service_fixtures import ApiProcess, counters_in_postgres, run_flusher_once, token, wait_until

from daemon import db, keys
from daemon.kafka_mock import MockCluster
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.store import Store
from daemon.views.drains import Drain
from flusher.flusher import Flusher
from lua import Scripts

LIFETIME_S = 6  # long enough for a few requests on a loaded machine, short enough to wait for
# "just before" the expiry: the checks that a record is still honoured start once at most this much of
# its lifetime is left (the later half), and must end before it expires
LATE_MS = 3_000


def _now_ms(r: redis.Redis) -> int:
    """Redis's clock in ms, as lua/lib/records.lua reads it."""
    seconds, micros = r.time()
    return seconds * 1000 + micros // 1000


async def _now_ms_async(r: aioredis.Redis) -> int:
    seconds, micros = await r.time()
    return seconds * 1000 + micros // 1000


def _record(r: redis.Redis, shard: int, name: str) -> tuple[str | None, float | None]:
    """The record's value in the shard's ``rec`` hash and its expiry in ``recexp``."""
    return r.hget(keys.rec_key(shard), name), r.zscore(keys.recexp_key(shard), name)


def _sweep(settings: Settings) -> int:
    """One sweep of every shard by the flusher's own method (``sweep_records.lua``): records removed."""

    async def run() -> int:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        pool = await db.create_pool(settings)
        try:
            return await Flusher(settings, client, pool, Scripts.load(), Metrics()).sweep_records()
        finally:
            await client.aclose()
            await pool.close()

    return asyncio.run(run())


# -- Idempotency-Key answers ----------------------------------------------------------------------


def _like(api: ApiProcess, item: str, key: str = "") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token('alice')}"}
    if key:
        headers["Idempotency-Key"] = key
    r = api.client.post(f"/api/v1/content/{item}/like", headers=headers)
    assert r.status_code == 200, r.text
    return r


def _unlike(api: ApiProcess, item: str) -> None:
    r = api.client.delete(
        f"/api/v1/content/{item}/like", headers={"Authorization": f"Bearer {token('alice')}"}
    )
    assert (r.status_code, r.json()["state"]) == (200, "none"), r.text


def _likes(api: ApiProcess, item: str) -> int:
    r = api.client.get(f"/api/v1/content/{item}/stats")
    assert r.status_code == 200, r.text
    return int(r.json()["likes"])


def test_an_idempotency_key_answer_lives_exactly_its_lifetime_and_is_swept_after(
    start_api: Callable[..., ApiProcess], migrated: Settings
) -> None:
    settings = migrated.replace(idempotency_ttl_s=LIFETIME_S, rate_limits="")
    api = start_api(settings)
    # Two items, each liked by alice with a key: "kept" is retried after its expiry once the sweep has
    # removed it, "late" after its expiry before any sweep
    items = {"kept": "k1", "late": "k2"}
    shards = {item: keys.shard_of(item, settings.shards) for item in items}
    names = {item: keys.like_record(item, "alice", key) for item, key in items.items()}
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        # When alice likes both with their keys
        before = _now_ms(r)
        first = {item: _like(api, item, key) for item, key in items.items()}
        after = _now_ms(r)
        assert {item: a.json() for item, a in first.items()} == dict.fromkeys(
            items, {"state": "liked", "likes": 1, "dislikes": 0}
        )

        # Then each answer is a record whose expiry is exactly its lifetime after it was written
        expires = {}
        for item in items:
            value, expiry = _record(r, shards[item], names[item])
            assert value is not None, item
            assert before + LIFETIME_S * 1000 <= expiry <= after + LIFETIME_S * 1000, (item, before, after)
            expires[item] = expiry
            # and neither the hash nor the sorted set has a TTL: only the sweep removes records
            assert (r.ttl(keys.rec_key(shards[item])), r.ttl(keys.recexp_key(shards[item]))) == (-1, -1)

        # When alice takes the likes back (no key), then retries the keyed likes late in their lifetime
        for item in items:
            _unlike(api, item)
        last = min(expires.values())
        wait_until(lambda: _now_ms(r) >= last - LATE_MS, 30, "the later half of the records' lifetime")
        retried = {item: _like(api, item, key) for item, key in items.items()}
        swept = _sweep(settings)
        checked = _now_ms(r)

        # Then the retries were answered with the first answers and applied nothing, and the sweep
        # removed neither record: all before they expired
        assert checked < last, f"the checks ran {checked - last} ms after the records expired"
        for item in items:
            assert retried[item].headers.get("idempotent-replayed") == "true", item
            assert retried[item].json() == first[item].json()
            assert _likes(api, item) == 0, item
        assert swept == 0
        assert all(_record(r, shards[i], names[i])[1] == expires[i] for i in items)

        # When they have expired
        wait_until(lambda: _now_ms(r) > max(expires.values()), 30, "the records to expire")

        # Then until a sweep they are still stored, but a retry of "late" is a new request: applied
        for item in items:
            value, expiry = _record(r, shards[item], names[item])
            assert (value is not None, expiry) == (True, expires[item]), item
        late = _like(api, "late", "k2")
        assert ("idempotent-replayed" not in late.headers, late.json()["likes"]) == (True, 1)
        assert _likes(api, "late") == 1
        assert _record(r, shards["late"], names["late"])[1] > expires["late"]  # a record of its own

        # And a flusher pass sweeps the expired one away (exactly it: "late"'s new record lives on)
        run_flusher_once(settings)
        assert _record(r, shards["kept"], names["kept"]) == (None, None)
        assert _record(r, shards["late"], names["late"])[0] is not None

        # And a retry of "kept" after the sweep is a new request too: applied
        again = _like(api, "kept", "k1")
        assert ("idempotent-replayed" not in again.headers, again.json()["likes"]) == (True, 1)
        assert _likes(api, "kept") == 1


# -- drain marks ----------------------------------------------------------------------------------


@pytest.fixture
async def marks(stack: Stack) -> AsyncIterator[Stack]:
    """The cold-state stack with drain marks of LIFETIME_S seconds."""
    settings = stack.settings.replace(drain_marker_ttl_s=LIFETIME_S)
    store = Store(settings, stack.redis, stack.store.scripts, db.provided(stack.pool), stack.metrics)
    yield Stack(settings, stack.redis, stack.pool, store, stack.metrics)


async def _wait_clock(r: aioredis.Redis, at_least_ms: float, what: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while await _now_ms_async(r) < at_least_ms:
        assert asyncio.get_running_loop().time() < deadline, (
            f"timed out after {timeout_s}s waiting for {what}"
        )
        await asyncio.sleep(0.02)


async def test_a_drain_mark_lives_its_lifetime_from_the_senders_last_drain_and_is_swept_after(
    marks: Stack,
) -> None:
    store, settings, r = marks.store, marks.settings, marks.redis
    shard = marks.shard("a")
    rec, recexp = keys.rec_key(shard), keys.recexp_key(shard)

    def drain(seq: int) -> Drain:
        return Drain(shard, "p1", seq, {"a": seq}, {}, {}, {}, "20261207")

    async def apply(seq: int) -> list[object]:
        d = drain(seq)
        return await store.apply_drains([d.call(settings)], [d.needed])

    async def mark() -> tuple[str | None, float | None]:
        return await r.hget(rec, "d:p1"), await r.zscore(recexp, "d:p1")

    # When sender p1's first drain is applied
    before = await _now_ms_async(r)
    assert await apply(1) == [1]
    after = await _now_ms_async(r)

    # Then its mark expires exactly its lifetime after it was written
    value, first_expiry = await mark()
    assert value == "1"
    assert before + LIFETIME_S * 1000 <= first_expiry <= after + LIFETIME_S * 1000

    # When p1 drains again late in that lifetime
    await _wait_clock(r, first_expiry - LATE_MS, "the later half of the mark's lifetime")
    before = await _now_ms_async(r)
    assert await apply(2) == [1]
    after = await _now_ms_async(r)

    # Then the mark's lifetime starts over from that drain, and a retry of the first is still refused
    value, expiry = await mark()
    assert value == "2"
    assert before + LIFETIME_S * 1000 <= expiry <= after + LIFETIME_S * 1000
    assert expiry > first_expiry
    assert await apply(1) == [0]

    # When the first drain's lifetime is over, then a sweep keeps the mark and a retry is still refused
    await _wait_clock(r, first_expiry + 1, "the first drain's lifetime to pass")
    assert await marks.flusher().sweep_records() == 0
    assert await mark() == ("2", expiry)
    assert await apply(1) == [0]
    assert await apply(2) == [0]
    assert await _now_ms_async(r) < expiry, "the checks ran after the mark expired"

    # When p1 stays silent for the whole lifetime of its mark
    await _wait_clock(r, expiry + 1, "the mark to expire")

    # Then it is still stored (no TTL removes it) until a flusher pass sweeps it away
    assert (await r.ttl(rec), await r.ttl(recexp)) == (-1, -1)
    assert await mark() == ("2", expiry)
    await marks.flusher().drain()
    assert await mark() == (None, None)

    # And the views were counted once each: 1 + 2
    assert await marks.pool.fetchval("SELECT views FROM content_counters WHERE content_id = 'a'") == 3


# -- consumer offsets -----------------------------------------------------------------------------


def _views(content: list[str]) -> list[tuple[str, bytes]]:
    return [
        (f"u{i}", envelope({"event_type": "media_started", "content_id": c})) for i, c in enumerate(content)
    ]


def test_consumer_offsets_carry_no_ttl_and_survive_every_sweep(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given a consumer group that applied 200 views, with every record lifetime at one second
    bootstrap = kafka_cluster.bootstrap_servers
    settings = consumer_settings(migrated, bootstrap, idempotency_ttl_s=1, drain_marker_ttl_s=1)
    produce(bootstrap, INGEST, _views([f"item-{i % 7}" for i in range(200)]))
    ends = end_offsets(bootstrap, INGEST)
    proc = ConsumerProcess(settings)
    try:
        wait_until(lambda: applied_offsets(settings) == ends, 60, "every partition applied to its end")
    finally:
        assert proc.stop() == 0

    # Then its offsets, and its reservations, carry no TTL, and no journal is left
    group = settings.consumer_group
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        assert r.ttl(keys.consumer_offsets_key(group)) == -1
        assert r.ttl(keys.consumer_claims_key(group)) == -1
        assert r.exists(keys.consumer_journal_key(group), keys.consumer_journal_ranges_key(group)) == 0

        # When every record lifetime is over, and a flusher pass sweeps
        over = _now_ms(r) + 1_000
        wait_until(lambda: _now_ms(r) > over, 30, "every record lifetime to pass")
        run_flusher_once(settings)

        # Then the offsets are all still there, unchanged
        assert applied_offsets(settings) == ends
        assert r.ttl(keys.consumer_offsets_key(group)) == -1
    assert {c: v["views"] for c, v in counters_in_postgres(settings.database_url).items()} == {
        f"item-{i}": len(range(i, 200, 7)) for i in range(7)
    }

    # And a consumer of the group started again applies only what was produced since: nothing twice
    produce(bootstrap, INGEST, _views(["item-0"] * 10))
    ends = end_offsets(bootstrap, INGEST)
    proc = ConsumerProcess(settings)
    try:
        wait_until(lambda: applied_offsets(settings) == ends, 60, "the new views applied")
    finally:
        assert proc.stop() == 0
    run_flusher_once(settings)
    assert {c: v["views"] for c, v in counters_in_postgres(settings.database_url).items()} == {
        f"item-{i}": len(range(i, 200, 7)) + (10 if i == 0 else 0) for i in range(7)
    }
