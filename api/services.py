"""What the request handlers share in one api process: clients, the buffer, auth, metrics."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.auth import Authenticator
from api.buffer import ViewBuffer
from api.engagement_events import EngagementEvents
from api.ingest import BodyReader
from api.ratelimit import Limit, RateLimiter, parse_limits
from api.registry import ContentRegistry
from daemon import db
from daemon.events import EventProducer
from daemon.metrics import Metrics
from daemon.metrics_share import SharedMetrics
from daemon.redis_client import check_config as check_redis_config
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from lua import Scripts

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    redis: aioredis.Redis
    scripts: Scripts
    store: Store
    buffer: ViewBuffer
    auth: Authenticator
    bodies: BodyReader
    producer: EventProducer | None = None
    registry: ContentRegistry | None = None
    events: EngagementEvents | None = None
    limits: dict[str, Limit] = field(default_factory=dict)
    limiter: RateLimiter | None = None
    shared_metrics: SharedMetrics | None = None
    _pool: db.LazyPool | None = None

    @classmethod
    def create(cls, settings: Settings) -> Services:
        metrics = Metrics(roles=("api",))
        redis = make_redis(settings)
        scripts = Scripts.load()
        lazy_pool = db.LazyPool(settings)  # created on first use: the API starts while Postgres is down
        store = Store(settings, redis, scripts, lazy_pool, metrics)
        buffer = ViewBuffer(settings, store, metrics)
        services = cls(
            settings, metrics, redis, scripts, store, buffer, Authenticator(settings), BodyReader(settings)
        )
        services._pool = lazy_pool
        services.producer = EventProducer(settings, metrics)
        services.registry = ContentRegistry(settings, redis, services.pool, metrics)
        services.events = EngagementEvents(settings, services.producer, services.registry, metrics)
        services.limits = parse_limits(settings.rate_limits)
        services.limiter = RateLimiter(redis, scripts.rate_limit)
        metrics.label_actions(sorted(services.limits))
        if settings.metrics_dir:
            services.shared_metrics = SharedMetrics(settings.metrics_dir, metrics.registry)
        return services

    async def pool(self) -> asyncpg.Pool:
        """The Postgres pool, created on first use so that the API starts while Postgres is down."""
        if self._pool is None:
            self._pool = db.LazyPool(self.settings)
        return await self._pool()

    async def start(self) -> None:
        if not self.auth.configured:
            log.warning("no ENGAGEMENT_JWT_SECRET or ENGAGEMENT_JWT_PUBLIC_KEY: every token will be refused")
        # A bulk batch allocates ~1,000 dicts: with the default threshold (700) the cyclic collector
        # would run on every request. Request data holds no cycles; collect far less often.
        gc.freeze()
        gc.set_threshold(self.settings.gc_gen0_threshold, 20, 50)
        if self.producer is not None:  # warns when ENGAGEMENT_KAFKA_BOOTSTRAP is not set
            await self.producer.start()
        if self.events is not None:
            self.events.start()
        if self.settings.redis_cluster:
            try:  # the cluster client must learn the slots before a burst of concurrent commands
                await self.redis.initialize()  # type: ignore[attr-defined]
            except (RedisError, OSError) as exc:
                log.warning("Redis Cluster not reachable at start (%s); will retry on use", exc)
        for warning in await check_redis_config(self.redis):
            log.warning("%s", warning)
        self.buffer.start()
        if self.shared_metrics is not None:
            self.shared_metrics.start()
        try:
            await self.pool()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("Postgres not reachable at start (%s); will retry on use", exc)

    async def stop(self) -> None:
        await self.buffer.close(self.settings.shutdown_drain_timeout_s)
        if self.events is not None:  # after the buffer drained, before the producer closes
            await self.events.close()
        if self.producer is not None:
            await self.producer.close()
        if self.shared_metrics is not None:
            await self.shared_metrics.stop()
        pipeliner = self.__dict__.get("_pipeliner")  # made on first use by api.pipeliner.pipeliner_for
        if pipeliner is not None:
            await pipeliner.aclose()
        await self.redis.aclose()
        if self._pool is not None:
            await self._pool.close()
