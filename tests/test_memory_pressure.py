"""Redis at maxmemory (docs/redis-memory.md): when only unflushed data is left, writes answer 503 with
Retry-After and views stay buffered; the flusher keeps capturing, writing and finishing (its scripts
run at the limit), which gives the flushed keys their TTL back, so that Redis can evict them again.
Nothing acknowledged is lost and nothing is counted twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from service_fixtures import ApiProcess, counters_in_postgres, run_flusher_once, token, wait_until

from daemon.proc.servers import RedisServer
from daemon.settings import Settings

JUNK = "junk:{x}:"  # keys without a TTL that the test writes to fill Redis (never evictable)


@pytest.fixture
def small_redis(servers_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(servers_dir / "small-redis", appendonly=False)
    server.start()
    with redis.Redis.from_url(server.url) as client:
        client.config_set("maxmemory-policy", "volatile-lru")
    yield server
    server.stop()


def _fill(client: redis.Redis) -> None:
    """Leave Redis over maxmemory with nothing it may evict: persistent junk, then a limit below it."""
    pipe = client.pipeline(transaction=False)
    for i in range(20_000):
        pipe.set(f"{JUNK}{i}", "x" * 200)
    pipe.execute()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 1_000_000)


def _free(client: redis.Redis) -> None:
    client.config_set("maxmemory", 0)
    for start in range(0, 20_000, 1000):
        client.delete(*(f"{JUNK}{i}" for i in range(start, start + 1000)))


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def test_at_maxmemory_writes_answer_503_views_wait_and_the_flusher_keeps_freeing(
    small_redis: RedisServer, migrated: Settings
) -> None:
    settings = migrated.replace(redis_url=small_redis.url)
    api = ApiProcess(settings)
    try:
        # Given a like and views accepted and applied to Redis, not flushed yet
        assert api.client.post("/api/v1/content/a/like", headers=_auth("u1")).status_code == 200
        for _ in range(3):
            assert api.client.post("/api/v1/content/a/views").status_code == 202
        wait_until(lambda: api.client.get("/api/v1/content/a/stats").json()["views"] == 3, what="3 views")
        with redis.Redis.from_url(small_redis.url) as client:
            # When Redis is full of data it may not evict
            _fill(client)
            # Then a like is refused with 503, Retry-After and a machine-readable error
            r = api.client.post("/api/v1/content/a/like", headers=_auth("u2"))
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "redis_memory_full" and r.headers["retry-after"] == "1"
            # views are still accepted (buffered), reads still answer
            for _ in range(2):
                assert api.client.post("/api/v1/content/a/views").status_code == 202
            assert api.client.get("/api/v1/content/a/stats").json()["views"] == 3
            # and the flusher, at the limit, writes what Redis held
            run_flusher_once(settings)
            assert counters_in_postgres(settings.database_url)["a"]["views"] == 3
            # When memory is freed, the buffered views land and the like goes through
            _free(client)
            wait_until(lambda: api.client.get("/api/v1/content/a/stats").json()["views"] == 5, what="5 views")
            assert api.client.post("/api/v1/content/a/like", headers=_auth("u2")).json()["likes"] == 2
        run_flusher_once(settings)
        counts = counters_in_postgres(settings.database_url)["a"]
        assert (counts["views"], counts["likes"]) == (5, 2)
        metrics = api.client.get("/metrics").text
        assert 'engagement_redis_oom_refusals_total{what="request"} 1.0' in metrics
    finally:
        api.kill()
