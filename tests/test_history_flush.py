"""Watch history through the flusher's exactly-once path: a flusher killed at any point loses no
acknowledged heartbeat, and a clear racing a flush never lets a cleared entry come back.

The first tests stage crash points and races with in-process objects; the last one SIGKILLs real
``engagementd flusher`` processes at random moments while heartbeats keep arriving over HTTP."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest
import redis
import redis.asyncio as aioredis
from lease_helpers import held_leases
from service_fixtures import ApiProcess, pending_redis_work, run_flusher_once, token, wait_until
from test_flusher_crash import FlusherProcess, poll

from daemon import db, history, keys
from daemon.metrics import Metrics
from daemon.proc.servers import RedisClusterServers
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from flusher.flusher import Flusher
from flusher.writer import write_batches
from lua import Scripts

LEASE_MS = 500


@dataclass
class Stack:
    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool
    scripts: Scripts

    def flusher(self) -> Flusher:
        return Flusher(self.settings, self.redis, self.pool, self.scripts, Metrics())

    @property
    def store(self) -> Store:
        return Store(self.settings, self.redis, self.scripts, db.provided(self.pool), Metrics())

    async def beat(self, user: str, item: str, pct: float, pos: int) -> history.Entry:
        return await history.record(self.store, user, item, pct, pos)

    async def rows(self) -> dict[tuple[str, str], tuple[float, int]]:
        found = await self.pool.fetch(
            "SELECT user_id, content_id, progress_pct, position_seconds FROM watch_history"
        )
        return {(r[0], r[1]): (round(r[2], 2), r[3]) for r in found}

    async def leases_expired(self) -> None:
        async def none_held() -> bool:
            return await held_leases(self.redis) == 0

        await poll(none_held, what="the crashed flusher's leases to expire")

    async def leftovers(self) -> list[str]:
        found = []
        for pattern in ("eng:*:hist:*", "eng:*:hdelta", "eng:*:hbatch", "eng:*:batch_id"):
            found += [k async for k in self.redis.scan_iter(match=pattern)]
        return found


@pytest.fixture
async def stack(migrated: Settings) -> AsyncIterator[Stack]:
    settings = migrated.replace(flush_lease_ms=LEASE_MS)
    client = make_redis(settings)
    pool = await db.create_pool(settings)
    try:
        yield Stack(settings, client, pool, Scripts.load())
    finally:
        await client.aclose()
        await pool.close()


async def test_heartbeats_captured_by_a_flusher_that_died_are_written_by_the_next(stack: Stack) -> None:
    # Given heartbeats captured by a flusher that died before writing them
    await stack.beat("u1", "a", 10, 1)
    await stack.beat("u2", "a", 20, 2)
    crashed = await stack.flusher().capture()
    assert {pair for b in crashed for pair in b.history} == {("u1", "a"), ("u2", "a")}

    # And newer heartbeats that arrived after the capture
    await stack.beat("u1", "a", 15, 5)
    await stack.beat("u1", "b", 30, 3)

    # When the next flusher drains once the leases expired
    await stack.leases_expired()
    await stack.flusher().drain()

    # Then every acknowledged heartbeat is in Postgres, the last one winning, and Redis holds nothing
    assert await stack.rows() == {("u1", "a"): (15.0, 5), ("u1", "b"): (30.0, 3), ("u2", "a"): (20.0, 2)}
    assert await stack.leftovers() == []


async def test_a_batch_committed_before_the_crash_is_trimmed_and_deleted_not_rewritten(stack: Stack) -> None:
    # Given a flusher that committed a batch and died before trimming and deleting the Redis side
    await stack.beat("u1", "a", 10, 1)
    batches = await stack.flusher().capture()
    async with stack.pool.acquire() as conn:
        written = await write_batches(conn, batches)
    assert written.history_rows == 1
    # And a newer heartbeat on the same item arrived after the commit
    newer = await stack.beat("u1", "a", 11, 2)

    # When the next flusher resumes
    await stack.leases_expired()
    successor = stack.flusher()
    first = await successor.flush_once()

    # Then it only deleted the committed batch, kept the newer heartbeat, and wrote it in the next pass
    assert first is not None and first.committed == [] and first.history_rows == 0
    assert await history.pending(stack.redis, stack.settings.shards, "u1") == {"a": newer}
    second = await successor.flush_once()
    assert second is not None and second.history_rows == 1
    assert await stack.rows() == {("u1", "a"): (11.0, 2)}
    assert await stack.leftovers() == []


async def test_a_clear_after_a_capture_is_not_undone_by_that_flush(stack: Stack) -> None:
    # Given heartbeats of two users captured by a flusher (read, not yet written)
    await stack.beat("u1", "a", 10, 1)
    await stack.beat("u1", "b", 20, 2)
    await stack.beat("u2", "a", 30, 3)
    flusher = stack.flusher()
    batches = await flusher.capture()

    # When u1 clears the history, then the flusher writes and finishes what it had read
    assert await history.purge_history(stack.store, stack.pool, "u1") == 0
    async with stack.pool.acquire() as conn:
        written = await write_batches(conn, batches)
    await flusher.trim_history(batches)
    await flusher.finish(batches)

    # Then u1's cleared entries were not written; u2's were
    assert written.history_rows == 1
    assert await stack.rows() == {("u2", "a"): (30.0, 3)}
    # And a heartbeat after the clear is written as usual
    await stack.beat("u1", "a", 40, 4)
    await flusher.drain()
    assert await stack.rows() == {("u2", "a"): (30.0, 3), ("u1", "a"): (40.0, 4)}
    assert await stack.leftovers() == []


async def test_a_clear_waits_for_a_flush_in_flight_and_then_deletes_what_it_wrote(stack: Stack) -> None:
    # Given a flusher in the middle of its transaction, with u1's heartbeat written but not committed
    await stack.beat("u1", "a", 10, 1)
    flusher = stack.flusher()
    batches = await flusher.capture()
    conn = await stack.pool.acquire()
    transaction = conn.transaction()
    await transaction.start()
    await write_batches(conn, batches)  # a savepoint inside the outer transaction

    # When u1 clears the history meanwhile
    clear = asyncio.create_task(history.purge_history(stack.store, stack.pool, "u1"))

    # Then the clear waits for the flush's lock on watch_history_clears
    async def clear_is_waiting() -> bool:
        waiting = await stack.pool.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 'watch_history_clears' AND NOT l.granted"
        )
        return waiting == 1

    await poll(clear_is_waiting, what="the clear to wait for the flush")
    assert not clear.done()

    # And once the flush commits, the clear deletes the row it wrote
    await transaction.commit()
    await stack.pool.release(conn)
    assert await clear == 1
    await flusher.trim_history(batches)
    await flusher.finish(batches)
    assert await stack.rows() == {}
    assert await flusher.flush_once() is None


async def test_history_scripts_reload_after_script_flush(stack: Stack) -> None:
    await stack.redis.script_flush()
    entry = await stack.beat("u1", "a", 12.345, 7)
    assert (entry.progress_pct, entry.position_seconds) == (12.35, 7)
    await stack.redis.script_flush()
    await stack.flusher().drain()
    await stack.redis.script_flush()
    assert await history.purge_history(stack.store, stack.pool, "u1") == 1


async def test_a_heartbeat_stamp_never_goes_back_for_an_entry(stack: Stack) -> None:
    # Given an entry whose stamp is in the future (as after the Redis clock stepped back)
    shard = keys.shard_of("u1", stack.settings.shards)
    future = int(time.time() * 1_000_000) + 3_600_000_000
    await stack.redis.hset(keys.history_key(shard, "u1"), "a", f"{future}|1.0|1")

    # When a heartbeat arrives, then it is stamped just after, so the flusher's newer-wins upsert keeps it
    entry = await stack.beat("u1", "a", 2, 2)
    assert entry.ts_us == future + 1


# -- SIGKILL at random moments ----------------------------------------------------------------------


@dataclass
class Watcher:
    """Sends heartbeats from a thread; remembers the last acknowledged one per (user, item)."""

    api: ApiProcess
    last: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    sent: int = 0
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(11)
        users = [f"viewer-{i}" for i in range(12)]
        try:
            with httpx.Client(base_url=self.api.base_url, timeout=10.0) as client:
                while not self.stop.is_set():
                    user, item = rng.choice(users), f"film-{rng.randrange(6)}"
                    pct, pos = round(rng.uniform(0, 100), 2), rng.randrange(10_000)
                    r = client.put(
                        f"/api/v1/users/me/history/{item}",
                        json={"progress_pct": pct, "position_seconds": pos},
                        headers={"Authorization": f"Bearer {token(user)}"},
                    )
                    assert r.status_code == 200, r.text
                    self.last[(user, item)] = (pct, pos)
                    self.sent += 1
        except BaseException as exc:  # reported by the test's main thread
            self.error = exc


@pytest.mark.slow
def test_no_acknowledged_heartbeat_is_lost_when_flushers_are_killed_at_random_moments(
    migrated: Settings, start_api: Callable[..., ApiProcess]
) -> None:
    settings = migrated.replace(flush_interval_ms=20, flush_lease_ms=300, rate_limits="")
    api = start_api(settings)
    watcher = Watcher(api)
    thread = threading.Thread(target=watcher.run, name="watcher")
    rng = random.Random(2027)
    started: list[FlusherProcess] = []
    stranded = 0

    def start_flusher() -> FlusherProcess:
        flusher = FlusherProcess(settings)
        started.append(flusher)
        flusher.wait_ready()
        return flusher

    # Given heartbeats keep arriving over HTTP
    thread.start()
    try:
        # When flushers are SIGKILLed at random moments of their work
        for _ in range(10):
            flusher = start_flusher()
            time.sleep(rng.uniform(0.02, 0.4))  # the random moment of the kill (fault injection)
            flusher.kill()
            stranded += len(_stranded_heartbeats(settings))
            assert watcher.error is None, watcher.error
        # And, until some kill has stranded captured heartbeats (a random moment can miss every capture),
        # flushers are SIGKILLed as soon as a captured batch is seen
        for _ in range(20):
            if stranded:
                break
            flusher = start_flusher()
            deadline = time.monotonic() + 10
            while not _stranded_heartbeats(settings) and time.monotonic() < deadline:
                pass  # polled as fast as SCAN answers: the capture-to-finish window is milliseconds
            flusher.kill()
            stranded += len(_stranded_heartbeats(settings))
            assert watcher.error is None, watcher.error
    finally:
        watcher.stop.set()
        thread.join(30)
        for f in started:
            if f.proc.returncode is None:
                f.kill()
    assert watcher.error is None, watcher.error
    assert watcher.sent > 100
    # (A kill that strands no captured heartbeats tests nothing: make sure some landed inside passes.)
    assert stranded > 0, "none of the kills left captured heartbeats behind"

    # Then once the leases expire a last flusher leaves nothing behind
    def flushed_everything() -> bool:
        run_flusher_once(settings)
        return pending_redis_work(settings.redis_url) == 0 and not _pending_history(settings)

    wait_until(flushed_everything, 60, "a last flusher to leave no pending heartbeats")

    # And Postgres holds exactly the last acknowledged heartbeat of every (user, item)
    async def rows() -> dict[tuple[str, str], tuple[float, int]]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            found = await conn.fetch(
                "SELECT user_id, content_id, progress_pct, position_seconds FROM watch_history"
            )
        finally:
            await conn.close()
        return {(r[0], r[1]): (round(r[2], 2), r[3]) for r in found}

    assert asyncio.run(rows()) == watcher.last


def _stranded_heartbeats(settings: Settings) -> list[bytes]:
    with redis.Redis.from_url(settings.redis_url) as r:
        return list(r.scan_iter(match="eng:*:hbatch"))


def _pending_history(settings: Settings) -> list[bytes]:
    with redis.Redis.from_url(settings.redis_url) as r:
        return [
            *r.scan_iter(match="eng:*:hdelta"),
            *r.scan_iter(match="eng:*:hbatch"),
            *r.scan_iter(match="eng:*:hist:*"),
        ]


@pytest.mark.slow
def test_history_flows_through_a_redis_cluster(
    redis_cluster: RedisClusterServers, migrated: Settings
) -> None:
    # Given the api and the flusher on a three-master Redis Cluster, users spread over 64 shards
    settings = migrated.replace(redis_url=redis_cluster.url, redis_cluster=True, shards=64, rate_limits="")
    users = [f"cl-user-{i}" for i in range(40)]
    api = ApiProcess(settings)
    try:
        # When each user sends heartbeats on two items, and the first half clears its history
        for user in users:
            for i in range(3):
                for item in ("a", "b"):
                    r = api.client.put(
                        f"/api/v1/users/me/history/{item}",
                        json={"progress_pct": i, "position_seconds": i},
                        headers={"Authorization": f"Bearer {token(user)}"},
                    )
                    assert r.status_code == 200, r.text
        run_flusher_once(settings)
        for user in users[:20]:
            r = api.client.delete(
                "/api/v1/users/me/history", headers={"Authorization": f"Bearer {token(user)}"}
            )
            assert r.status_code == 204
        listed = api.client.get(
            "/api/v1/users/me/history", headers={"Authorization": f"Bearer {token(users[-1])}"}
        )
        assert [e["content_id"] for e in listed.json()["items"]] == ["b", "a"]
    finally:
        api.kill()

    # Then Postgres holds the last heartbeat of every user who did not clear
    async def rows() -> dict[tuple[str, str], int]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            found = await conn.fetch("SELECT user_id, content_id, position_seconds FROM watch_history")
        finally:
            await conn.close()
        return {(r[0], r[1]): r[2] for r in found}

    run_flusher_once(settings)
    assert asyncio.run(rows()) == {(u, item): 2 for u in users[20:] for item in ("a", "b")}
