"""The flusher's Redis memory metrics (daemon/redis_memory.py) against real private Redis servers: keys
by kind exact on a small keyspace and estimated on a large one, memory, evictions and expiries, a
Redis that goes away, a Redis Cluster, and a flusher process exporting them."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from service_fixtures import ROOT, service_env, wait_until

from daemon import keys
from daemon.metrics import Metrics
from daemon.proc.servers import RedisClusterServers, RedisServer, free_port
from daemon.redis_client import make_redis
from daemon.redis_memory import KINDS, RedisMemory, key_kind, scale
from daemon.settings import Settings

# What each kind's keys look like: name -> (kind, TTL in s or None).
KNOWN_KEYS: dict[str | bytes, tuple[str, int | None]] = {
    keys.counts_key(1, "a"): ("counts", None),
    keys.counts_key(2, "b"): ("counts", None),
    keys.counts_key(3, "c"): ("counts", 3600),
    keys.creator_key(4, "cr1"): ("creator", 3600),
    keys.like_key(1, "a", "u1"): ("like", 3600),
    keys.like_key(1, "a", "u2"): ("like", 3600),
    keys.subscription_key(4, "cr1", "u1"): ("subscription", None),
    keys.uv_key(1, "a"): ("viewers", None),
    keys.uv_day_key(1, "20250101", "a"): ("viewers", 3600),
    keys.registry_key(1, "a"): ("registry", 3600),
    keys.rate_limit_key("u1", "like"): ("rate_limit", 60),
    keys.history_key(5, "u1"): ("history", None),
    keys.trend_key(1, 5_883_336): ("trending", 7200),
    keys.trend_hour_key(1, 490_278): ("trending", 691_200),
    keys.delta_key(1): ("pending", None),
    keys.vdelta_key(1): ("pending", None),
    keys.dirty_key(1): ("pending", None),
    keys.batch_id_key(2): ("pending", None),
    keys.SHARDS_KEY: ("bookkeeping", None),
    keys.rec_key(1): ("bookkeeping", None),
    keys.recexp_key(1): ("bookkeeping", None),
    keys.lease_key(1): ("bookkeeping", None),
    keys.consumer_offsets_key("engagementd"): ("bookkeeping", None),
    "someone-else:key": ("other", None),
    b"\xff\xfe not utf-8": ("other", None),
}


def write_known_keys(client: redis.Redis) -> None:
    """KNOWN_KEYS, each with a value of the type the service gives it."""
    for name, (kind, ttl) in KNOWN_KEYS.items():
        text = name.decode(errors="replace") if isinstance(name, bytes) else name
        if kind in ("counts", "creator", "history") or text.endswith((":rec", ":delta", ":offsets")):
            client.hset(name, "views", 1)
        elif kind == "viewers":
            client.pfadd(name, "u1")
        elif kind in ("rate_limit", "trending") or text.endswith(":recexp"):
            client.zadd(name, {"r1": 1})
        elif text.endswith(":vdelta"):
            client.rpush(name, "drain")
        elif text.endswith(":dirty"):
            client.sadd(name, keys.counts_key(1, "a"))
        else:
            client.set(name, "1")
        if ttl is not None:
            client.expire(name, ttl)


@contextlib.asynccontextmanager
async def sampler(redis_url: str, **kwargs: int) -> AsyncIterator[tuple[RedisMemory, Metrics]]:
    """A flusher's Metrics and a sampler on ``redis_url``."""
    metrics = Metrics(roles=("flusher",))
    client = make_redis(Settings.from_env({}, redis_url=redis_url))
    try:
        yield RedisMemory(client, metrics.redis_memory, **kwargs), metrics
    finally:
        await client.aclose()


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def keys_by_kind(metrics: Metrics) -> dict[str, float]:
    return {kind: value(metrics, "engagement_redis_keys", kind=kind) or 0.0 for kind in KINDS}


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.levelname for r in caplog.records if r.name == "daemon.redis_memory"]


@pytest.fixture
def scratch_redis(servers_dir: Path) -> Iterator[RedisServer]:
    """A private Redis of this test alone (memory limits, stops), on a free port."""
    server = RedisServer(servers_dir / f"scratch-{uuid.uuid4().hex[:8]}", appendonly=False)
    server.start()
    yield server
    server.stop()


# -- classification ----------------------------------------------------------------------------------


def test_every_key_of_the_layout_has_its_kind() -> None:
    for name, (kind, _) in KNOWN_KEYS.items():
        assert key_kind(name) == kind, name
    pending = ["batch", "vbatch", "sdelta", "sbatch", "subdelta", "subbatch", "hdelta", "hbatch"]
    pending += ["dirtybatch", "uvtouch", "uvatouch", "uvbatch", "uvabatch"]
    for name in pending:
        assert key_kind(f"eng:{{s:7}}:{name}") == "pending", name
    assert key_kind(keys.LAYOUT_KEY) == key_kind("eng:{c:g}:journal") == "bookkeeping"
    # a content id may hold colons and braces; only the segment after the tag names the kind
    assert key_kind(keys.counts_key(3, "a:lk:b}")) == "counts"
    assert key_kind("eng:{s:1}:live") == key_kind("eng:nothing") == key_kind("eng:{s:1") == "other"


def test_an_estimate_is_split_in_the_sample_proportions_and_sums_to_the_total() -> None:
    assert scale(Counter(counts=3, like=1), 1000) == {"counts": 750, "like": 250}
    parts = scale(Counter(a=1, b=1, c=1), 100)  # 33.3 each: one gets the remaining key
    assert sorted(parts.values()) == [33, 33, 34]
    assert scale(Counter(), 50) == {}


# -- a single Redis ----------------------------------------------------------------------------------


async def test_keys_of_each_kind_are_counted_exactly_with_memory_and_the_limit(redis_url: str) -> None:
    # Given an empty Redis, and a flusher's metrics before any sample: every series, at zero
    async with sampler(redis_url) as (memory, metrics):
        assert keys_by_kind(metrics) == dict.fromkeys(KINDS, 0.0)
        for name in ("used_bytes", "max_bytes"):
            assert value(metrics, f"engagement_redis_memory_{name}") == 0.0
        assert value(metrics, "engagement_redis_evicted_keys_total") == 0.0
        # When it holds known keys of every kind (7 with a TTL) and a limit of 100 MiB
        with redis.Redis.from_url(redis_url) as client:
            write_known_keys(client)
            before = client.config_get("maxmemory")["maxmemory"]
            client.config_set("maxmemory", 100 * 1024 * 1024)
            try:
                await memory.sample()
                used = client.info("memory")["used_memory"]
            finally:
                client.config_set("maxmemory", before)
        # And once more, without the limit
        limited = value(metrics, "engagement_redis_memory_max_bytes")
        await memory.sample()
    # Then each kind has exactly its keys (a small keyspace: all of them classified)
    assert keys_by_kind(metrics) == {
        "counts": 3, "creator": 1, "like": 2, "subscription": 1, "viewers": 2, "registry": 1,
        "rate_limit": 1, "history": 1, "trending": 2, "pending": 4, "bookkeeping": 5, "other": 2,
    }  # fmt: skip
    assert value(metrics, "engagement_redis_keys_total") == len(KNOWN_KEYS) == 25
    assert value(metrics, "engagement_redis_keys_volatile") == 9
    # And memory is Redis's own figure (within what one INFO reply allocates) and the limit exact
    assert abs(value(metrics, "engagement_redis_memory_used_bytes") - used) < 256 * 1024  # type: ignore[operator]
    assert limited == 100 * 1024 * 1024
    # And without a limit, max is 0
    assert value(metrics, "engagement_redis_memory_max_bytes") == 0


async def test_a_large_keyspace_is_estimated_from_random_keys(redis_url: str) -> None:
    # Given 1,000 keys, counts and likes 3:1, and an exact-count budget of 10 keys
    with redis.Redis.from_url(redis_url) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(1000):
            pipe.set(keys.counts_key(i % 16, f"c{i}") if i % 4 else keys.like_key(i % 16, f"c{i}", "u"), 1)
        pipe.execute()
    # When it is sampled
    async with sampler(redis_url, exact_max_keys=10) as (memory, metrics):
        await memory.sample()
    # Then the estimates are whole keys that add up to DBSIZE
    found = keys_by_kind(metrics)
    assert sum(found.values()) == 1000 == value(metrics, "engagement_redis_keys_total")
    assert all(n == int(n) for n in found.values())
    # And each kind is near its share: 500 RANDOMKEY replies (server-side random, not seedable) give a
    # share's standard deviation of sqrt(.75 * .25 / 500) = 1.9%, so +-100 keys is over 5 of them
    assert abs(found["counts"] - 750) <= 100 and abs(found["like"] - 250) <= 100
    assert found["counts"] + found["like"] == 1000


async def test_evictions_and_expiries_are_redis_own_counters(scratch_redis: RedisServer) -> None:
    # Given a Redis that evicts keys with a TTL (volatile-lru), full of such keys
    with redis.Redis.from_url(scratch_redis.url) as client:
        client.config_set("maxmemory-policy", "volatile-lru")
        pipe = client.pipeline(transaction=False)
        for i in range(3000):
            pipe.set(keys.counts_key(i % 16, f"c{i}"), "x" * 1000, ex=3600)
        pipe.execute()
        # When its limit drops below what it holds, and one key expires (read after its TTL)
        client.set("eng:{s:1}:lk:short|u", 1, px=1)
        wait_until(lambda: client.get("eng:{s:1}:lk:short|u") is None, 5, "the key's expiry")
        client.config_set("maxmemory", client.info("memory")["used_memory"] - 1024 * 1024)
        client.set(keys.counts_key(0, "last"), "x", ex=3600)
        client.config_set("maxmemory", 0)  # no more evictions while the counters are compared
        async with sampler(scratch_redis.url) as (memory, metrics):
            await memory.sample()
        stats = client.info("stats")
    # Then the metrics are Redis's counters, and Redis did evict
    assert stats["evicted_keys"] > 0
    assert value(metrics, "engagement_redis_evicted_keys_total") == stats["evicted_keys"]
    assert value(metrics, "engagement_redis_expired_keys_total") == stats["expired_keys"] >= 1
    assert value(metrics, "engagement_redis_keys", kind="counts") == 3001 - stats["evicted_keys"]


async def test_a_redis_outage_keeps_the_last_values_and_is_logged_once(
    scratch_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a sample of a Redis with one counts key
    with redis.Redis.from_url(scratch_redis.url) as client:
        client.hset(keys.counts_key(1, "a"), "views", 1)
    async with sampler(scratch_redis.url) as (memory, metrics):
        await memory.sample()
        assert value(metrics, "engagement_redis_keys", kind="counts") == 1
        # When Redis stops and three samples fail
        scratch_redis.stop()
        with caplog.at_level(logging.INFO, logger="daemon.redis_memory"):
            for _ in range(3):
                await memory.sample()
            # Then the last values stay, and one warning says so
            assert value(metrics, "engagement_redis_keys", kind="counts") == 1
            assert value(metrics, "engagement_redis_keys_total") == 1
            assert logged(caplog) == ["WARNING"]
            # And once Redis is back (empty: no AOF), sampling resumes
            scratch_redis.start()
            await memory.sample()
    assert value(metrics, "engagement_redis_keys", kind="counts") == 0
    assert logged(caplog) == ["WARNING", "INFO"]


async def test_a_policy_that_can_evict_pending_data_is_warned_about_once_while_it_lasts(
    scratch_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with redis.Redis.from_url(scratch_redis.url) as client:
        async with sampler(scratch_redis.url) as (memory, _):
            with caplog.at_level(logging.INFO, logger="daemon.redis_memory"):
                for policy in ("volatile-lru", "allkeys-lru", "allkeys-lru", "volatile-lru", "allkeys-lru"):
                    client.config_set("maxmemory-policy", policy)
                    await memory.sample()
    assert logged(caplog) == ["WARNING", "WARNING"]
    assert "maxmemory-policy is allkeys-lru" in caplog.records[-1].getMessage()


# -- Redis Cluster -----------------------------------------------------------------------------------


async def test_a_cluster_is_summed_over_its_primaries(redis_cluster: RedisClusterServers) -> None:
    # Given the known keys spread over three primaries
    with redis.RedisCluster.from_url(redis_cluster.url) as client:
        write_known_keys(client)  # type: ignore[arg-type]
    metrics = Metrics(roles=("flusher",))
    settings = Settings.from_env({}, redis_url=redis_cluster.url, redis_cluster=True)
    client = make_redis(settings)
    try:
        # When every primary is classified in full, then estimated (budget 0: RANDOMKEY on each)
        exact = RedisMemory(client, metrics.redis_memory)
        await exact.sample()
        found = keys_by_kind(metrics)
        await RedisMemory(client, metrics.redis_memory, exact_max_keys=0).sample()
        estimated = keys_by_kind(metrics)
    finally:
        await client.aclose()
    # Then the exact counts are those of one Redis, and estimates add up to the keys of every primary
    assert found == {kind: float(sum(k == kind for k, _ in KNOWN_KEYS.values())) for kind in KINDS}
    assert sum(estimated.values()) == len(KNOWN_KEYS) == value(metrics, "engagement_redis_keys_total")
    assert value(metrics, "engagement_redis_keys_volatile") == 9
    assert value(metrics, "engagement_redis_memory_used_bytes") > 0  # type: ignore[operator]


# -- the flusher process -----------------------------------------------------------------------------


def test_the_flusher_exports_redis_memory_on_its_metrics_port(migrated: Settings) -> None:
    # Given a Redis with two like keys, and a flusher sampling it every 0.2 s
    with redis.Redis.from_url(migrated.redis_url) as client:
        client.set(keys.like_key(1, "a", "u1"), 1, ex=3600)
        client.set(keys.like_key(1, "a", "u2"), 1, ex=3600)
    port = free_port()
    env = {**service_env(migrated), "ENGAGEMENT_REDIS_MEMORY_SAMPLE_S": "0.2"}
    command = [sys.executable, "-m", "daemon.proc.cli", "flusher", "--metrics-port", str(port)]
    proc = subprocess.Popen([*command, "--metrics-host", "127.0.0.1"], env=env, cwd=ROOT)
    try:

        def likes() -> float:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            except httpx.TransportError:
                return -1
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "engagement_redis_keys" and sample.labels == {"kind": "like"}:
                        return sample.value
            return -1

        # Then /metrics soon has them, and a third key shows up at a later sample
        wait_until(lambda: likes() == 2, what="engagement_redis_keys{kind=like} 2")
        with redis.Redis.from_url(migrated.redis_url) as client:
            client.set(keys.like_key(1, "a", "u3"), 1, ex=3600)
        wait_until(lambda: likes() == 3, what="engagement_redis_keys{kind=like} 3")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # the sampler task stops with the flusher
