"""The core every role stands on: settings, metrics, the Redis client, the scripts, the store and a
Postgres pool created on first use. The api's ``Services`` extends it with what only HTTP needs; the
consumer and the flusher build one of their own. Domain operations (``daemon.shares``,
``daemon.fallback``, ``daemon.purge``...) take a ``Core``, never a transport's object.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from daemon import db
from daemon.breaker import Breaker
from daemon.errors import Unavailable
from daemon.metrics import Metrics
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from lua import Scripts


@dataclass(kw_only=True)
class Core:
    settings: Settings
    metrics: Metrics
    redis: aioredis.Redis
    scripts: Scripts
    store: Store
    lazy_pool: db.LazyPool

    @staticmethod
    def parts(settings: Settings, metrics: Metrics, breaker: Breaker | None = None) -> dict:
        """The fields of a core for ``settings``: a Redis client (behind ``breaker`` if given), the
        scripts, a pool made on first use (a role starts while Postgres is down) and the store on them."""
        redis = make_redis(settings, breaker)
        scripts = Scripts.load()
        lazy_pool = db.LazyPool(settings)
        store = Store(settings, redis, scripts, lazy_pool, metrics)
        return {
            "settings": settings,
            "metrics": metrics,
            "redis": redis,
            "scripts": scripts,
            "store": store,
            "lazy_pool": lazy_pool,
        }

    @classmethod
    def create(cls, settings: Settings, metrics: Metrics) -> Core:
        return cls(**cls.parts(settings, metrics))

    async def pool(self) -> asyncpg.Pool:
        """The Postgres pool, created on first use."""
        return await self.lazy_pool()

    def unavailable(self, message: str) -> Unavailable:
        """A dependency cannot serve this request now: ``message``, and Retry-After
        ``buffer_retry_after_s``. Raise it ``from`` the error that said so."""
        return Unavailable(message, self.settings.buffer_retry_after_s)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.lazy_pool.close()
