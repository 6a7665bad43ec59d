"""The Redis client every process uses (api, flusher, reconcile, consumer)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from daemon.breaker import Breaker, GuardedRedis, GuardedRedisCluster
from daemon.keys import HASH_MAX_LISTPACK_ENTRIES
from daemon.settings import Settings


def make_redis(settings: Settings, breaker: Breaker | None = None) -> aioredis.Redis:
    """A Redis client; with ``redis_cluster`` a cluster client (every script touches one slot). With
    ``breaker`` (the api's), every call fails at once while Redis is known to hang (daemon/breaker.py).

    A pooled connection that broke (typically: idle while Redis restarted) is retried once, at once, on a
    new connection; timeouts are not retried. Without that, the first command or pipeline on each
    connection left over from the old server fails after a restart. Only a connection error is re-sent,
    and every script this service sends over the pool is safe to run twice (a view drain carries its id,
    a reaction or subscription sets an absolute state, a share or comment carries its record).
    """
    if settings.redis_cluster:
        # the api's (with a breaker): no retries, so a hung node costs a call one timeout; the other
        # roles keep redis-py's (their scripts are safe to run twice; they retry batches anyway)
        extra = {} if breaker is None else {"retry": Retry(NoBackoff(), 0)}
        cluster = (RedisCluster if breaker is None else GuardedRedisCluster).from_url(
            settings.redis_url,
            **extra,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            decode_responses=True,
            max_connections=settings.redis_max_connections,
        )
        if breaker is not None:
            cluster.breaker = breaker  # type: ignore[attr-defined]
        return cluster  # type: ignore[return-value]
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_s,  # waiting for a free connection
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        decode_responses=True,
        health_check_interval=30,
        # redis-py's Retry also retries timeouts unless told which errors: a hung Redis would cost two
        # timeouts per call, and a script that ran but answered late would run twice
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
    )
    if breaker is None:
        return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
    client = GuardedRedis.from_pool(pool)
    client.breaker = breaker
    return client


# Policies that evict only keys with a TTL: never pending data (docs/redis-memory.md). "noeviction" never
# evicts; it only refuses writes at maxmemory (answered 503), so cold state is dropped by its TTL alone.
SAFE_POLICIES = frozenset({"noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"})


async def check_config(redis: aioredis.Redis) -> list[str]:
    """Warnings about Redis's configuration: large hashes kept as listpacks, or an eviction policy that
    could evict unflushed data. CONFIG may be refused (managed Redis): then there is nothing to check."""
    warnings = []
    try:
        found = await redis.config_get("hash-max-listpack-entries")
        policies = await redis.config_get("maxmemory-policy")
    except (RedisError, OSError):
        return []
    values = {int(v) for v in found.values()} if found else set()
    too_big = sorted(v for v in values if v > HASH_MAX_LISTPACK_ENTRIES)
    if too_big:
        warnings.append(
            f"Redis hash-max-listpack-entries is {too_big[-1]}: per-shard hashes stay listpacks and every "
            f"update scans them; set it to {HASH_MAX_LISTPACK_ENTRIES} or less"
            " (docs/operations.md, Redis configuration)"
        )
    unsafe = sorted({p for p in (policies or {}).values() if p not in SAFE_POLICIES})
    if unsafe:
        warnings.append(
            f"Redis maxmemory-policy is {unsafe[-1]}: it can evict changes not yet written to Postgres "
            "(lost counts, a like counted twice); use volatile-lru (docs/redis-memory.md)"
        )
    return warnings
