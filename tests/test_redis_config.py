"""The api warns at start when Redis would keep the per-shard hashes as listpacks (every update a linear
scan); the private servers of tests, dev mode and benchmarks are started with the recommended value."""

from __future__ import annotations

import asyncio

import redis

from daemon.keys import HASH_MAX_LISTPACK_ENTRIES
from daemon.proc.servers import RedisServer
from daemon.redis_client import check_config, make_redis
from daemon.settings import Settings


def _check(settings: Settings) -> list[str]:
    async def run() -> list[str]:
        client = make_redis(settings)
        try:
            return await check_config(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_private_redis_keeps_shard_hashes_as_hash_tables_and_a_larger_setting_is_warned_about(
    redis_server: RedisServer, settings: Settings
) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        found = client.config_get("hash-max-listpack-entries")
        assert found == {"hash-max-listpack-entries": str(HASH_MAX_LISTPACK_ENTRIES)}
        assert _check(settings) == []
        try:
            client.config_set("hash-max-listpack-entries", 512)
            (warning,) = _check(settings)
            assert "hash-max-listpack-entries is 512" in warning
        finally:
            client.config_set("hash-max-listpack-entries", HASH_MAX_LISTPACK_ENTRIES)


def test_an_eviction_policy_that_could_evict_unflushed_data_is_warned_about(
    redis_server: RedisServer, settings: Settings
) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
        try:
            for safe in ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"):
                client.config_set("maxmemory-policy", safe)
                assert _check(settings) == [], safe
            for unsafe in ("allkeys-lru", "allkeys-lfu", "allkeys-random"):
                client.config_set("maxmemory-policy", unsafe)
                (warning,) = _check(settings)
                assert f"maxmemory-policy is {unsafe}" in warning and "volatile-lru" in warning
        finally:
            client.config_set("maxmemory-policy", policy)
