"""The flusher is exactly once (docs/design.md, decision 4): killed at any point, nothing is lost and nothing
is counted twice.

The first tests stage the crash points deterministically with in-process objects (capture, the
Postgres commit and finish are called one by one); the last one SIGKILLs real ``engagementd flusher``
processes at random moments while views keep arriving over HTTP, and checks the exact totals.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import msgpack
import pytest
import redis
import redis.asyncio as aioredis
from lease_helpers import held_leases
from service_fixtures import (
    ROOT,
    ApiProcess,
    counters_in_postgres,
    pending_redis_work,
    run_flusher_once,
    service_env,
    token,
    wait_until,
)

from daemon import db, keys
from daemon.metrics import Metrics
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from daemon.views.buffer import ViewBuffer
from flusher.flusher import Flusher
from flusher.writer import write_batches
from lua import Scripts

# A crashed flusher's lease must expire quickly for the next one to resume its shards.
LEASE_MS = 500


@dataclass
class Stack:
    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool
    scripts: Scripts
    buffer: ViewBuffer

    def flusher(self) -> Flusher:
        """A new flusher, as a freshly started process would be (its own lease owner id)."""
        return Flusher(self.settings, self.redis, self.pool, self.scripts, Metrics())

    async def views(self, *views: tuple[str, int, int]) -> None:
        """Count (content_id, views, watch_seconds) in the api's buffer and drain it to Redis."""
        for content_id, n, watch in views:
            for i in range(n):
                assert self.buffer.add(content_id, watch if i == 0 else 0)
        assert await self.buffer.drain_once()

    async def postgres(self) -> dict[str, tuple[int, int]]:
        rows = await self.pool.fetch("SELECT content_id, views, watch_seconds FROM content_counters")
        return {r["content_id"]: (r["views"], r["watch_seconds"]) for r in rows}

    async def ledger(self) -> list[str]:
        return sorted(r["batch_id"] for r in await self.pool.fetch("SELECT batch_id FROM flush_batches"))

    async def pending(self, pattern: str) -> int:
        return len([k async for k in self.redis.scan_iter(match=pattern)])

    async def leftovers(self) -> int:
        """Deltas, view drains, batches, batch ids and leases still in Redis."""
        kinds = ("delta", "vdelta", "batch", "vbatch", "batch_id", "lease")
        return sum([await self.pending(f"eng:*:{kind}") for kind in kinds])

    async def leases_expired(self) -> None:
        """What a crash leaves behind: leases that nobody renews. Wait for them to expire."""
        await poll(lambda: self.no_leases(), what="the crashed flusher's leases to expire")

    async def no_leases(self) -> bool:
        return await held_leases(self.redis) == 0


async def poll(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def stack(migrated: Settings) -> AsyncIterator[Stack]:
    settings = migrated.replace(flush_lease_ms=LEASE_MS)
    client = make_redis(settings)
    pool = await db.create_pool(settings)
    scripts = Scripts.load()
    metrics = Metrics()
    buffer = ViewBuffer(settings, Store(settings, client, scripts, db.provided(pool), metrics), metrics)
    try:
        yield Stack(settings, client, pool, scripts, buffer)
    finally:
        await client.aclose()
        await pool.close()


async def test_a_batch_committed_before_the_crash_is_only_deleted_by_the_next_flusher(stack: Stack) -> None:
    # Given deltas in Redis on several shards
    await stack.views(("a", 3, 10), ("b", 5, 0), ("c", 1, 7))
    crashed = stack.flusher()
    batches = await crashed.capture()
    assert {cid for b in batches for cid in b.rows} == {"a", "b", "c"}

    # When a flusher commits them to Postgres and dies before deleting the Redis side
    async with stack.pool.acquire() as conn:
        written = await write_batches(conn, batches)
    assert sorted(b.batch_id for b in written.committed) == sorted(b.batch_id for b in batches)
    assert await stack.postgres() == {"a": (3, 10), "b": (5, 0), "c": (1, 7)}

    # Then another flusher leaves the crashed one's shards alone while its leases last
    successor = stack.flusher()
    assert await successor.capture() == []

    # And once they expire it recognises the batches in the ledger and only deletes them
    await stack.leases_expired()
    result = await successor.flush_once()
    assert result is not None
    assert result.committed == [] and result.rows == 0
    assert sorted(b.batch_id for b in result.already) == sorted(b.batch_id for b in batches)
    assert await stack.postgres() == {"a": (3, 10), "b": (5, 0), "c": (1, 7)}
    assert await stack.ledger() == sorted(b.batch_id for b in batches)
    assert await stack.pending("eng:*:batch*") == await stack.pending("eng:*:vbatch") == 0
    assert await successor.flush_once() is None
    skipped = successor.metrics.registry.get_sample_value("engagement_flush_batches_already_committed_total")
    assert skipped == len(batches)


async def test_a_batch_captured_but_not_committed_is_resumed_and_written_once(stack: Stack) -> None:
    # Given a flusher captured a batch and died before the Postgres commit
    await stack.views(("a", 4, 40), ("b", 2, 0))
    crashed = stack.flusher()
    batches = await crashed.capture()
    assert await stack.postgres() == {}

    # When the next flusher runs after the crashed one's leases expire
    await stack.leases_expired()
    successor = stack.flusher()
    result = await successor.flush_once()

    # Then it wrote the same batches (same ids), once
    assert result is not None and result.already == []
    assert sorted((b.batch_id, b.rows) for b in result.committed) == sorted(
        (b.batch_id, b.rows) for b in batches
    )
    assert await stack.postgres() == {"a": (4, 40), "b": (2, 0)}
    assert await stack.ledger() == sorted(b.batch_id for b in batches)
    assert await successor.flush_once() is None
    assert await stack.leftovers() == 0


async def test_a_crash_during_the_postgres_write_leaves_nothing_half_written(stack: Stack) -> None:
    # Given a flusher whose transaction dies after the COPY, before the commit
    await stack.views(("a", 6, 60))
    crashed = stack.flusher()
    batches = await crashed.capture()
    async with stack.pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresError):
            async with conn.transaction():
                await write_batches(conn, batches)  # a nested savepoint: committed only with the outer one
                await conn.execute("SELECT 1/0")
    assert await stack.postgres() == {} and await stack.ledger() == []

    # When the next flusher resumes
    await stack.leases_expired()
    await stack.flusher().drain()

    # Then the batch is written exactly once
    assert await stack.postgres() == {"a": (6, 60)}
    assert await stack.ledger() == [b.batch_id for b in batches]


async def test_capture_never_overwrites_a_stranded_batch_when_new_deltas_arrive(stack: Stack) -> None:
    # Given a stranded batch: captured by a flusher that died before writing it
    await stack.views(("a", 2, 20), ("b", 1, 0))
    crashed = stack.flusher()
    stranded = {b.shard: b for b in await crashed.capture()}

    # When new views for the same items arrive meanwhile
    await stack.views(("a", 5, 50), ("b", 3, 3))

    # Then capturing again, by the same owner or by the next flusher, returns the stranded batch unchanged
    again = {b.shard: b for b in await crashed.capture()}
    assert {s: (b.batch_id, b.rows) for s, b in again.items()} == {
        s: (b.batch_id, b.rows) for s, b in stranded.items()
    }
    await stack.leases_expired()  # the crashed flusher's capture renewed its leases
    successor = stack.flusher()
    resumed = {b.shard: b for b in await successor.capture()}
    assert {s: (b.batch_id, b.rows) for s, b in resumed.items()} == {
        s: (b.batch_id, b.rows) for s, b in stranded.items()
    }
    # And the new views wait, untouched, as one drain per shard in its list of view drains
    for shard in stranded:
        assert await stack.redis.llen(keys.vdelta_key(shard)) == 1

    # When the successor writes and finishes the stranded batch, then passes again
    async with stack.pool.acquire() as conn:
        first = await write_batches(conn, list(resumed.values()))
    await successor.finish(list(resumed.values()))
    assert len(first.committed) == len(stranded)
    assert await stack.postgres() == {"a": (2, 20), "b": (1, 0)}
    second = await successor.flush_once()

    # Then the new deltas are flushed by the later pass, as new batches, and the totals are exact
    assert second is not None and second.already == []
    assert {b.batch_id for b in second.committed}.isdisjoint(b.batch_id for b in stranded.values())
    assert await stack.postgres() == {"a": (7, 70), "b": (4, 3)}
    assert await successor.flush_once() is None


async def test_a_late_finish_from_a_stale_flusher_does_not_delete_a_newer_batch(stack: Stack) -> None:
    # Given flusher A captured and committed a batch, then stalled past its lease
    await stack.views(("a", 1, 1))
    stale = stack.flusher()
    old = await stale.capture()
    async with stack.pool.acquire() as conn:
        await write_batches(conn, old)
    await stack.leases_expired()

    # And flusher B found it in the ledger, deleted it, and captured a newer batch
    successor = stack.flusher()
    assert (await successor.flush_once()).already  # type: ignore[union-attr]
    await stack.views(("a", 2, 2))
    new = await successor.capture()
    assert {b.shard for b in new} == {b.shard for b in old}

    # When A wakes up and finishes its old batch
    await stale.finish(old)

    # Then B's batch is still there and is written once
    async with stack.pool.acquire() as conn:
        written = await write_batches(conn, new)
    await successor.finish(new)
    assert len(written.committed) == len(new)
    assert await stack.postgres() == {"a": (3, 3)}
    assert await stack.pending("eng:*:batch*") == await stack.pending("eng:*:vbatch") == 0


# -- SIGKILL at random moments ----------------------------------------------------------------------


@dataclass
class Poster:
    """Posts single views and msgpack batches from a thread; counts exactly what got 202."""

    api: ApiProcess
    ids: list[str]
    views: dict[str, int] = field(default_factory=dict)
    watch: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(7)
        headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {token(scope='ingest')}"}
        try:
            with httpx.Client(base_url=self.api.base_url, timeout=10.0) as client:
                while not self.stop.is_set():
                    if rng.random() < 0.6:
                        content_id = rng.choice(self.ids)
                        seconds = rng.choice([0, 0, 1, 30, 600])
                        body = {"watch_seconds": seconds} if seconds else None
                        r = client.post(f"/api/v1/content/{content_id}/views", json=body)
                        assert r.status_code == 202, r.text
                        self._count(content_id, seconds)
                    else:
                        items: list[dict[str, Any]] = []
                        for _ in range(rng.randint(1, 200)):
                            item: dict[str, Any] = {"content_id": rng.choice(self.ids)}
                            if rng.random() < 0.5:
                                item["watch_seconds"] = rng.randint(0, 3600)
                            items.append(item)
                        r = client.post("/api/v1/views/batch", content=msgpack.packb(items), headers=headers)
                        assert r.status_code == 202, r.text
                        assert r.json() == {"accepted": len(items)}
                        for item in items:
                            self._count(item["content_id"], item.get("watch_seconds", 0))
                    self.requests += 1
        except BaseException as exc:  # reported by the test's main thread
            self.error = exc

    def _count(self, content_id: str, seconds: int) -> None:
        self.views[content_id] = self.views.get(content_id, 0) + 1
        if seconds:
            self.watch[content_id] = self.watch.get(content_id, 0) + seconds


class FlusherProcess:
    """``engagementd flusher`` in the background, ready once it logs that it runs."""

    def __init__(self, settings: Settings) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.proc.cli", "flusher"],
            env=service_env(settings),
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.ready = threading.Event()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if " running every " in line:
                self.ready.set()

    def wait_ready(self) -> None:
        wait_until(lambda: self.ready.is_set() or self.proc.poll() is not None, 30, "a flusher to start")
        assert self.ready.is_set(), f"flusher exited with {self.proc.returncode}:\n{''.join(self.log)}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        assert self.proc.returncode == -signal.SIGKILL, (
            f"flusher died on its own with {self.proc.returncode}:\n{''.join(self.log)}"
        )


def pending_batches(redis_url: str) -> int:
    """Captured batches not yet finished: their ids (the views themselves are in vbatch lists)."""
    with redis.Redis.from_url(redis_url) as r:
        return sum(1 for _ in r.scan_iter(match="eng:*:batch_id"))


def ledger_stats(database_url: str) -> tuple[int, int]:
    async def fetch() -> tuple[int, int]:
        conn = await db.connect(Settings.from_env({}, database_url=database_url))
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT batch_id) AS d FROM flush_batches"
            )
        finally:
            await conn.close()
        return row["n"], row["d"]

    return asyncio.run(fetch())


@pytest.mark.slow
def test_views_are_exact_when_flushers_are_killed_at_random_moments(
    migrated: Settings, start_api: Callable[..., ApiProcess]
) -> None:
    settings = migrated.replace(buffer_flush_interval_ms=20, flush_interval_ms=20, flush_lease_ms=300)
    api = start_api(settings)
    poster = Poster(api, [f"crash-{i}" for i in range(50)])
    thread = threading.Thread(target=poster.run, name="poster")
    rng = random.Random(2026)
    kills = stranded = 0
    started: list[FlusherProcess] = []

    # Given views keep arriving over HTTP
    thread.start()
    try:
        # When flushers, sometimes two at once, are SIGKILLed at random moments of their work
        for round_ in range(24):
            flushers = [FlusherProcess(settings) for _ in range(2 if round_ % 3 == 0 else 1)]
            started.extend(flushers)
            for f in flushers:
                f.wait_ready()
            for f in sorted(flushers, key=lambda _: rng.random()):
                # The random moment of the kill (fault injection), not a wait for a condition.
                time.sleep(rng.uniform(0.02, 0.4))
                f.kill()
                kills += 1
                stranded += pending_batches(settings.redis_url)
            assert poster.error is None, poster.error
    finally:
        poster.stop.set()
        thread.join(30)
        for f in started:
            if f.proc.returncode is None:
                f.kill()
    assert poster.error is None, poster.error
    assert kills >= 25 and poster.requests > 100
    # (A kill that strands no batch tests nothing: make sure the kills landed inside flush passes.)
    assert stranded > 0, f"none of the {kills} kills left a batch behind"

    # And the api stops gracefully (SIGTERM drains its buffer into Redis)
    assert api.stop() == 0
    ledger_before, _ = ledger_stats(settings.database_url)
    assert ledger_before > 0, "the killed flushers never committed anything: the kills hit nothing"

    # Then once the killed flushers' leases expire a last flusher leaves nothing behind in Redis
    def flushed_everything() -> bool:
        run_flusher_once(settings)
        return pending_redis_work(settings.redis_url) == 0

    wait_until(flushed_everything, 60, "a last flusher to leave no pending deltas or batches")

    # And Postgres holds exactly what the api acknowledged, neither less nor more
    got = counters_in_postgres(settings.database_url)
    assert {cid: row["views"] for cid, row in got.items()} == poster.views
    assert {cid: row["watch_seconds"] for cid, row in got.items() if row["watch_seconds"]} == poster.watch
    assert all(row[c] == 0 for row in got.values() for c in ("likes", "dislikes", "comments", "shares"))
    total, distinct = ledger_stats(settings.database_url)
    assert total == distinct

    # And the live counts in Redis were applied once too
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        live = {}
        for cid in poster.ids:
            shard = keys.shard_of(cid, settings.shards)
            live[cid] = int(r.hget(keys.counts_key(shard, cid), "views") or 0)
    assert {cid: n for cid, n in live.items() if n} == poster.views
