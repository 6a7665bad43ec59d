"""What the request handlers share in one api process: clients, the buffer, auth, metrics."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field

import asyncpg
from redis.exceptions import RedisError

from api.auth import Authenticator
from api.ingest import BodyReader
from daemon.breaker import Breaker
from daemon.core import Core
from daemon.engagement_events import EngagementEvents
from daemon.events import EventProducer
from daemon.live import Live
from daemon.metrics import Metrics
from daemon.metrics_share import SharedMetrics
from daemon.ratelimit import Limit, RateLimiter, parse_limits
from daemon.redis_client import check_config as check_redis_config
from daemon.registry import ContentRegistry
from daemon.settings import Settings
from daemon.trending import Trending
from daemon.views.buffer import ViewBuffer

log = logging.getLogger(__name__)


def api_breaker(settings: Settings, metrics: Metrics) -> Breaker:
    """The breaker in front of the api's Redis calls: a request waits for a hung Redis about one
    ENGAGEMENT_REDIS_TIMEOUT_S, then falls back or answers 503; a probe every second at most."""

    def changed(is_open: bool) -> None:
        metrics.redis_breaker_open.set(1 if is_open else 0)
        if is_open:
            metrics.redis_breaker_trips.inc()
            log.warning(
                "Redis did not answer within %s s: Redis calls fail at once until it answers again",
                settings.redis_timeout_s,
            )
        else:
            log.warning("Redis answers again: Redis calls resume")

    return Breaker(min(1.0, settings.redis_timeout_s), settings.redis_timeout_s, on_change=changed)


@dataclass(kw_only=True)
class Services(Core):
    """What the request handlers share in one api process: the core, the buffer, auth, the producer."""

    buffer: ViewBuffer
    auth: Authenticator
    bodies: BodyReader
    producer: EventProducer | None = None
    registry: ContentRegistry | None = None
    events: EngagementEvents | None = None
    limits: dict[str, Limit] = field(default_factory=dict)
    limiter: RateLimiter | None = None
    shared_metrics: SharedMetrics | None = None
    trending: Trending | None = None
    live: Live | None = None

    @classmethod
    def create(cls, settings: Settings, metrics: Metrics | None = None) -> Services:
        metrics = metrics or Metrics(roles=("api",))
        parts = Core.parts(settings, metrics, api_breaker(settings, metrics))
        services = cls(
            **parts,
            buffer=ViewBuffer(settings, parts["store"], metrics),
            auth=Authenticator(settings),
            bodies=BodyReader(settings),
        )
        services.producer = EventProducer(settings, metrics)
        services.registry = ContentRegistry(settings, services.redis, services.pool, metrics)
        services.events = EngagementEvents(settings, services.producer, services.registry, metrics)
        services.limits = parse_limits(settings.rate_limits)
        services.limiter = RateLimiter(services.store)
        services.trending = Trending(services)
        services.live = Live(services)
        metrics.label_actions(sorted(services.limits))
        if settings.metrics_dir:
            services.shared_metrics = SharedMetrics(settings.metrics_dir, metrics.registry)
        return services

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
        if self.live is not None:
            self.live.start()
        if self.shared_metrics is not None:
            self.shared_metrics.start()
        try:
            await self.pool()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("Postgres not reachable at start (%s); will retry on use", exc)

    async def stop(self) -> None:
        if self.live is not None:  # closed already when SIGTERM reached a granian worker (api/app.py)
            await self.live.close(self.settings.live_send_timeout_s)
        await self.buffer.close(self.settings.shutdown_drain_timeout_s)
        if self.events is not None:  # after the buffer drained, before the producer closes
            await self.events.close()
        if self.producer is not None:
            await self.producer.close()
        if self.shared_metrics is not None:
            await self.shared_metrics.stop()
        pipeliner = self.__dict__.get("_pipeliner")  # made on first use by daemon.pipeliner.pipeliner_for
        if pipeliner is not None:
            await pipeliner.aclose()
        await self.close()
