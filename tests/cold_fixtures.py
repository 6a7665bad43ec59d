"""The ``stack`` fixture: settings, a Redis client, a pool, a store and metrics on the test's private
servers, for tests of cold keys and the row filter (docs/redis-memory.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
import redis.asyncio as aioredis

from daemon import db, keys
from daemon.metrics import Metrics
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from daemon.store.rows import RowFilter
from daemon.views.buffer import ViewBuffer
from flusher.flusher import Flusher
from lua import Scripts


@dataclass
class Stack:
    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool
    store: Store
    metrics: Metrics

    def flusher(self) -> Flusher:
        return Flusher(self.settings, self.redis, self.pool, self.store.scripts, Metrics())

    def buffer(self) -> ViewBuffer:
        return ViewBuffer(self.settings, self.store, self.metrics)

    def shard(self, ident: str) -> int:
        return keys.shard_of(ident, self.settings.shards)

    def loads(self, kind: str) -> float:
        return self.metrics.cold_loads.labels(kind=kind)._value.get()

    def hits(self, kind: str) -> float:
        return self.metrics.cold_hits.labels(kind=kind)._value.get()

    def rows(self) -> RowFilter:
        return RowFilter(self.settings, self.redis, self.store.scripts)


@pytest.fixture
async def stack(migrated: Settings) -> AsyncIterator[Stack]:
    settings = migrated.replace(unique_viewers_day="2026-12-07")
    client = make_redis(settings)
    pool = await db.create_pool(settings)
    metrics = Metrics()
    try:
        yield Stack(
            settings,
            client,
            pool,
            Store(settings, client, Scripts.load(), db.provided(pool), metrics),
            metrics,
        )
    finally:
        await client.aclose()
        await pool.close()
