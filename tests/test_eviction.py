"""Redis at 64 MB with ``volatile-lru`` holds a hot set, not everything (docs/redis-memory.md): far more
like states, subscriptions and items than fit are written, Redis evicts what Postgres already has, the
same users change their likes long after their states were evicted, and every count and record ends
exact in Postgres, with no like counted twice and no out-of-memory error answered."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from service_fixtures import ROOT, ApiProcess, run_flusher_once, service_env, token

from daemon import db, keys
from daemon.fallback import reaction_target
from daemon.metrics import Metrics
from daemon.proc.servers import RedisServer
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from daemon.store.rows import RowFilter
from daemon.views.buffer import ViewBuffer
from lua import Scripts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MAXMEMORY = 64 * 1024 * 1024
USERS, ITEMS, LIKES_PER_USER = 3_000, 5_000, 20  # 60,000 like states
CREATORS, SUBSCRIPTIONS_PER_USER = 500, 4  # 12,000 subscriptions
VIEWED, DRAIN = 600_000, 10_000  # items viewed once each (1 in 10 by a user: 2 HLLs more)
ROUND = 2_000  # script calls pipelined per round
SEED = 1207


@pytest.fixture
def small_redis(servers_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(servers_dir / "evicting-redis", appendonly=False)
    server.start()
    with redis.Redis.from_url(server.url) as client:
        client.config_set("maxmemory", MAXMEMORY)
        client.config_set("maxmemory-policy", "volatile-lru")
    yield server
    server.stop()


def _items_of(user: int, rng: random.Random) -> list[str]:
    return [f"item-{i}" for i in rng.sample(range(ITEMS), LIKES_PER_USER)]


def _creators_of(user: int) -> list[str]:
    return [f"creator-{(user * 7 + k * 251) % CREATORS}" for k in range(SUBSCRIPTIONS_PER_USER)]


class Model:
    """What Postgres must hold at the end: the like state of every pair, every subscription."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], int] = {}
        self.subscriptions: set[tuple[str, str]] = set()

    def react(self, user: str, item: str, action: str, answer: list) -> None:
        current = self.states.get((user, item), 0)
        target = reaction_target(current, action)
        expected = ["changed" if target != current else "unchanged", target]
        assert [answer[0], int(answer[1])] == expected, (user, item, action, answer)
        self.states[(user, item)] = target

    def counts(self) -> dict[str, tuple[int, int]]:
        likes: Counter[str] = Counter()
        dislikes: Counter[str] = Counter()
        for (_, item), state in self.states.items():
            if state == 1:
                likes[item] += 1
            elif state == -1:
                dislikes[item] += 1
        return {item: (likes[item], dislikes[item]) for item in likes.keys() | dislikes.keys()}


async def _react(store: Store, model: Model, calls: list[tuple[str, str, str]]) -> None:
    for start in range(0, len(calls), ROUND):
        chunk = calls[start : start + ROUND]
        answers = await store.set_reactions([(item, user, action, "") for user, item, action in chunk])
        for (user, item, action), answer in zip(chunk, answers, strict=True):
            assert not isinstance(answer, Exception), repr(answer)  # no OOM, no load failure
            model.react(user, item, action, answer)


async def _subscribe(store: Store, model: Model, calls: list[tuple[str, str, str]]) -> None:
    for start in range(0, len(calls), 200):
        chunk = calls[start : start + 200]
        answers = await asyncio.gather(*(store.set_subscription(c, u, a, "") for u, c, a in chunk))
        for (user, creator, action), answer in zip(chunk, answers, strict=True):
            assert answer[1] == (1 if action == "subscribe" else 0), answer
            if action == "subscribe":
                model.subscriptions.add((user, creator))
            else:
                model.subscriptions.discard((user, creator))


async def _view(buffer: ViewBuffer) -> None:
    """Every item of VIEWED viewed once (every tenth by a user), drained DRAIN items at a time; a drain
    Redis refuses for memory (answered 503 to clients) stays buffered and is retried."""
    for start in range(0, VIEWED, DRAIN):
        ids = [f"viewed-{i}" for i in range(start, start + DRAIN)]
        users = ids[::10]
        assert buffer.add_many(ids, [], [], None, (users, [f"v{i}" for i in range(len(users))]))
        for _ in range(1200):
            if await buffer.drain_once():
                break
            await asyncio.sleep(0.05)  # backoff while the flusher frees memory
        else:
            raise AssertionError("a drain stayed refused for a minute")


async def _flushed(client: redis.asyncio.Redis, shards: int, timeout_s: float = 300.0) -> None:
    """Until the flusher has written every pending change: no shard holds deltas, dirty keys or a batch.

    While it writes the views' last batch, every key in Redis may be pending, none evictable: a write
    then gets the OOM answer (503) the design promises (docs/redis-memory.md, "Memory pressure"), so the
    late changes below, which must get none, start once cold state can be evicted again."""
    pending = [
        key(s)
        for s in range(shards)
        for key in (
            keys.delta_key,
            keys.batch_key,
            keys.vdelta_key,
            keys.vbatch_key,
            keys.sdelta_key,
            keys.sbatch_key,
            keys.subdelta_key,
            keys.subbatch_key,
            keys.dirty_key,
            keys.dirtybatch_key,
            keys.uv_touch_key,
            keys.uv_batch_key,
            keys.uv_all_touch_key,
            keys.uv_all_batch_key,
        )
    ]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while left := await client.exists(*pending):
        assert asyncio.get_running_loop().time() < deadline, f"{left} pending keys after {timeout_s} s"
        await asyncio.sleep(0.1)


async def _build_row_filters(settings: Settings) -> None:
    client = make_redis(settings)
    pool = await db.create_pool(settings)
    try:
        assert await RowFilter(settings, client, Scripts.load()).ensure(pool) == settings.shards
    finally:
        await client.aclose()
        await pool.close()


def test_far_more_states_than_fit_end_exact_after_eviction_and_late_changes(
    small_redis: RedisServer, migrated: Settings
) -> None:
    settings = migrated.replace(redis_url=small_redis.url, reconcile_interval_s=0, flush_interval_ms=100)
    asyncio.run(_build_row_filters(settings))  # as `engagementd migrate` does, before any write
    flusher = subprocess.Popen(
        [sys.executable, "-m", "daemon.proc.cli", "flusher"], env=service_env(settings), cwd=ROOT
    )
    model = Model()
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    try:

        async def write() -> None:
            client = make_redis(settings)
            pool = await db.create_pool(settings)
            metrics = Metrics()
            store = Store(settings, client, Scripts.load(), db.provided(pool), metrics)
            try:
                # Given a million like states and 200,000 subscriptions, written once each
                likes = [(f"u{u}", item, "like") for u in range(USERS) for item in _items_of(u, rng)]
                await _react(store, model, likes)
                # (first likes of pairs Postgres has no row for: the row filter spares every read)
                assert metrics.cold_loads.labels(kind="like")._value.get() == 0
                subs = [(f"u{u}", c, "subscribe") for u in range(USERS) for c in _creators_of(u)]
                await _subscribe(store, model, subs)
                # and far more items than fit, viewed after them
                await _view(ViewBuffer(settings, store, metrics))
                await _flushed(client, settings.shards)
                # (Redis evicted: most of the first users' states are no longer in Redis)
                info = await client.info("stats")
                assert int(info["evicted_keys"]) > 0
                early = [
                    keys.like_key(keys.shard_of(item, settings.shards), item, user)
                    for user, item in list(model.states)[:1000]
                ]
                assert await client.exists(*early) < len(early) // 2
                # When the first users change their likes long after: unlike, switch, repeat
                actions = ("unlike", "dislike", "like", "undislike")
                late = [
                    (user, item, actions[(int(user[1:]) + int(item.split("-")[1])) % 4])
                    for (user, item) in list(model.states)[: USERS * LIKES_PER_USER // 3]
                ]
                await _react(store, model, late)
                # (evicted states are read from Postgres, never taken as new: exact answers above)
                assert metrics.cold_loads.labels(kind="like")._value.get() > 0
                await _react(store, model, late)  # repeated: changes nothing more
                unsubscribe = [(u, c, "unsubscribe") for (u, c) in sorted(model.subscriptions)[::3]]
                await _subscribe(store, model, unsubscribe)
            finally:
                await client.aclose()
                await pool.close()

        asyncio.run(write())
        # And likes over HTTP on states Redis evicted long ago: every answer a 200
        api = ApiProcess(settings.replace(rate_limits=""))
        try:
            for user, item in list(model.states)[:300]:
                auth = {"Authorization": f"Bearer {token(user)}"}
                r = api.client.post(f"/api/v1/content/{item}/like", headers=auth)
                assert (r.status_code, r.json()["state"]) == (200, "liked"), r.text
                model.states[(user, item)] = 1
        finally:
            api.kill()
    finally:
        flusher.terminate()
        flusher.wait(timeout=60)
    run_flusher_once(settings, timeout_s=600)

    # Then Postgres holds exactly the model: every like record, every count, every subscription
    async def check() -> None:
        conn = await db.connect(settings)
        try:
            rows = await conn.fetch("SELECT user_id, content_id, value FROM likes")
            assert {(r[0], r[1]): r[2] for r in rows} == {p: s for p, s in model.states.items() if s}
            rows = await conn.fetch("SELECT content_id, likes, dislikes FROM content_counters")
            counts = {r[0]: (r[1], r[2]) for r in rows}
            want = model.counts()
            assert {item: counts.get(item, (0, 0)) for item in want} == want
            assert all(v == (0, 0) for item, v in counts.items() if item not in want)
            rows = await conn.fetch("SELECT user_id, creator_id FROM creator_subscriptions")
            subs = {(r[0], r[1]) for r in rows}
            assert subs == model.subscriptions
            per_creator = Counter(c for _, c in model.subscriptions)
            got = dict(await conn.fetch("SELECT creator_id, subscribers FROM creator_counters"))
            assert {c: got.get(c, 0) for c in per_creator} == dict(per_creator)
            assert all(n == 0 for c, n in got.items() if c not in per_creator)
            views = await conn.fetchrow(
                "SELECT count(*), sum(views) FROM content_counters WHERE content_id LIKE 'viewed-%'"
            )
            assert tuple(views) == (VIEWED, VIEWED)
            assert await conn.fetchval("SELECT count(*) FROM content_unique_viewers") == VIEWED // 10
        finally:
            await conn.close()

    asyncio.run(check())
    with redis.Redis.from_url(small_redis.url) as client:
        assert int(client.info("memory")["used_memory"]) <= MAXMEMORY * 1.05
