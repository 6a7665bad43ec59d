"""The Redis client every process uses (api, flusher, reconcile, consumer)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from daemon.keys import HASH_MAX_LISTPACK_ENTRIES
from daemon.settings import Settings


def make_redis(settings: Settings) -> aioredis.Redis:
    """A Redis client; with ``redis_cluster`` a cluster client (every script touches one slot).

    A pooled connection that broke (typically: idle while Redis restarted) is retried once, at once, on a
    new connection; timeouts are not retried. Without that, the first command or pipeline on each
    connection left over from the old server fails after a restart. Only a connection error is re-sent,
    and every script this service sends over the pool is safe to run twice (a view drain carries its id,
    a reaction or subscription sets an absolute state, a share or comment carries its record).
    """
    if settings.redis_cluster:
        return RedisCluster.from_url(  # type: ignore[return-value]
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            decode_responses=True,
            max_connections=settings.redis_max_connections,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_s,  # waiting for a free connection
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        decode_responses=True,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


async def check_config(redis: aioredis.Redis) -> str | None:
    """A warning when Redis keeps large hashes as listpacks, or None. CONFIG may be refused (managed
    Redis): then there is nothing to check."""
    try:
        found = await redis.config_get("hash-max-listpack-entries")
    except (RedisError, OSError):
        return None
    values = {int(v) for v in found.values()} if found else set()
    too_big = sorted(v for v in values if v > HASH_MAX_LISTPACK_ENTRIES)
    if not too_big:
        return None
    return (
        f"Redis hash-max-listpack-entries is {too_big[-1]}: per-shard hashes stay listpacks and every "
        f"update scans them; set it to {HASH_MAX_LISTPACK_ENTRIES} or less (README, Redis configuration)"
    )
