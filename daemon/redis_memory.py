"""What Redis holds, sampled by the flusher: memory, keys by kind, evictions and expiries.

Redis is a bounded hot set over Postgres (docs/redis-memory.md): cold keys carry a TTL and may be
evicted, pending data may not. These metrics show how close Redis is to ``maxmemory`` and what fills
it, so an operator sees whether cold state (reloadable) or pending data (waiting for the flusher) grows.

``RedisMemory.sample()`` reads, on a single Redis or on every primary of a Redis Cluster, ``INFO``
(used_memory, maxmemory, maxmemory_policy, evicted_keys, expired_keys, the service database's keys and
expires) and classifies the keys by the name layout of daemon/keys.py: every key when a primary holds
at most ``exact_max_keys`` (SCAN), otherwise an estimate, DBSIZE times each kind's share of
``sample_keys`` RANDOMKEY replies (one pipeline). ``RedisMemoryMetrics`` exports the last sample
(zeros until the first one); a failed sample keeps the last values and is logged once per outage.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio.cluster import RedisCluster
from redis.client import NEVER_DECODE

from daemon import keys
from daemon.redis_client import SAFE_POLICIES

log = logging.getLogger(__name__)

KINDS = (
    "counts", "creator", "like", "subscription", "viewers", "registry",
    "rate_limit", "history", "trending", "pending", "bookkeeping", "other",
)  # fmt: skip
# Pending data (docs/redis-memory.md): per-shard keys waiting for the flusher.
PENDING = (
    "delta", "vdelta", "sdelta", "subdelta", "hdelta", "batch", "vbatch", "sbatch", "subbatch", "hbatch",
    "dirty", "dirtybatch", "uvtouch", "uvatouch", "uvbatch", "uvabatch", "batch_id",
)  # fmt: skip
# The segment after the hash tag ("eng:{s:N}:<name>[:...]") -> kind; "eng:config:*" and the consumer's
# "eng:{c:<group>}:*" are bookkeeping too.
_KIND_OF_NAME = {
    **keys.COLD_KINDS,
    "rl": "rate_limit",
    "hist": "history",
    "tr": "trending",
    "trh": "trending",
    **dict.fromkeys(PENDING, "pending"),
    **dict.fromkeys(("rec", "recexp", "lease", "rows"), "bookkeeping"),
}
EXACT_MAX_KEYS = 20_000  # a primary with at most this many keys has them all classified (SCAN)
SAMPLE_KEYS = 500  # RANDOMKEY replies an estimate is made of


def key_kind(key: str | bytes) -> str:
    """The kind of one key name (one of KINDS)."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if not key.startswith("eng:"):
        return "other"
    rest = key[4:]
    if rest.startswith("config:"):
        return "bookkeeping"
    end = rest.find("}:")
    if not rest.startswith("{") or end < 0:
        return "other"
    if rest.startswith("{c:"):
        return "bookkeeping"
    return _KIND_OF_NAME.get(rest[end + 2 :].split(":", 1)[0], "other")


def scale(sample: Counter[str], total: int) -> dict[str, int]:
    """``total`` split in the proportions of ``sample`` (largest remainders: the parts sum to it)."""
    n = sum(sample.values())
    if n == 0:
        return {}
    exact = {kind: total * hits / n for kind, hits in sample.items()}
    parts = {kind: int(value) for kind, value in exact.items()}
    left = total - sum(parts.values())
    for kind in sorted(exact, key=lambda k: exact[k] - parts[k], reverse=True)[:left]:
        parts[kind] += 1
    return parts


@dataclass
class RedisMemoryStats:
    """One sample, summed over the primaries."""

    used_bytes: int = 0
    max_bytes: int = 0  # 0: no limit (on a cluster: some primary has none)
    keys: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    keys_total: int = 0
    keys_volatile: int = 0
    evicted_keys: int = 0
    expired_keys: int = 0


class RedisMemoryMetrics(Collector):
    """Exports the last sample (all zero before the first); registered in the flusher role."""

    def __init__(self) -> None:
        self.stats = RedisMemoryStats()

    def collect(self) -> Iterator[Metric]:
        s = self.stats

        def gauge(name: str, help_text: str, value: int) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_text, value=value)

        yield gauge(
            "engagement_redis_memory_used_bytes", "Redis used_memory (sum over primaries).", s.used_bytes
        )
        yield gauge(
            "engagement_redis_memory_max_bytes",
            "Redis maxmemory (sum over primaries); 0: no limit.",
            s.max_bytes,
        )
        keys = GaugeMetricFamily(
            "engagement_redis_keys",
            f"Keys in the service's Redis database by kind (docs/redis-memory.md). Exact on a primary of"
            f" at most {EXACT_MAX_KEYS} keys (all classified with SCAN), otherwise an estimate: DBSIZE"
            f" times the kind's share of {SAMPLE_KEYS} RANDOMKEY replies.",
            labels=["kind"],
        )
        for kind in KINDS:
            keys.add_metric([kind], s.keys.get(kind, 0))
        yield keys
        yield gauge(
            "engagement_redis_keys_total",
            "Keys in the service's Redis database (INFO keyspace).",
            s.keys_total,
        )
        yield gauge(
            "engagement_redis_keys_volatile",
            "Keys with a TTL in the service's Redis database (INFO keyspace expires): what a volatile-*"
            " policy may evict.",
            s.keys_volatile,
        )
        yield CounterMetricFamily(
            "engagement_redis_evicted_keys",
            "Keys Redis evicted at maxmemory since it started (INFO stats evicted_keys, sampled).",
            value=s.evicted_keys,
        )
        yield CounterMetricFamily(
            "engagement_redis_expired_keys",
            "Keys Redis expired by their TTL since it started (INFO stats expired_keys, sampled).",
            value=s.expired_keys,
        )


class RedisMemory:
    """Samples Redis into a RedisMemoryMetrics (the flusher calls ``sample`` every
    ``ENGAGEMENT_REDIS_MEMORY_SAMPLE_S``, a ``daemon.loops.Every``)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        metrics: RedisMemoryMetrics,
        exact_max_keys: int = EXACT_MAX_KEYS,
        sample_keys: int = SAMPLE_KEYS,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._exact_max_keys = exact_max_keys
        self._sample_keys = sample_keys
        self._failing = False
        self._unsafe_policies: set[str] = set()  # warned about while they last

    async def sample(self) -> None:
        """Take one sample; on a Redis error keep the last one (logged once per outage)."""
        try:
            stats = RedisMemoryStats()
            nodes = [await self._sample_node(target, stats) for target in await self._targets()]
            limits = [limit for limit, _ in nodes]
            stats.max_bytes = 0 if 0 in limits else sum(limits)
        except Exception as exc:  # Redis down, or a reply not understood: never stop the flusher
            if not self._failing:
                log.warning("Redis memory metrics not sampled (last values kept): %r", exc)
            self._failing = True
            return
        if self._failing:
            log.info("Redis memory metrics sampled again")
        self._failing = False
        self._metrics.stats = stats
        self._check_policies({policy for _, policy in nodes})

    async def _targets(self) -> list[dict[str, Any]]:
        """Keyword arguments sending a command to each primary (none on a single Redis)."""
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()
            return [{"target_nodes": node} for node in self._redis.get_primaries()]
        return [{}]

    async def _sample_node(self, target: dict[str, Any], stats: RedisMemoryStats) -> tuple[int, str]:
        """Add one primary's numbers to ``stats``; its maxmemory and maxmemory-policy."""
        info = await self._redis.info(**target)
        db = info.get(f"db{self._db()}", {})
        stats.used_bytes += int(info["used_memory"])
        stats.keys_total += int(db.get("keys", 0))
        stats.keys_volatile += int(db.get("expires", 0))
        stats.evicted_keys += int(info.get("evicted_keys", 0))
        stats.expired_keys += int(info.get("expired_keys", 0))
        for kind, n in (await self._count_kinds(target, int(db.get("keys", 0)))).items():
            stats.keys[kind] += n
        return int(info.get("maxmemory", 0)), str(info.get("maxmemory_policy", "noeviction"))

    async def _count_kinds(self, target: dict[str, Any], dbsize: int) -> dict[str, int]:
        raw = {NEVER_DECODE: True}  # keys need not be UTF-8
        if dbsize <= self._exact_max_keys:
            names = {key async for key in self._redis.scan_iter(count=1000, **target, **raw)}
            return Counter(key_kind(key) for key in names)
        pipe = self._redis.pipeline(transaction=False)
        for _ in range(self._sample_keys):  # execute_command: a cluster pipeline blocks .randomkey()
            pipe.execute_command("RANDOMKEY", **target, **raw)
        replies = await pipe.execute()
        return scale(Counter(key_kind(key) for key in replies if key is not None), dbsize)

    def _db(self) -> int:
        if isinstance(self._redis, RedisCluster):
            return 0
        return int(self._redis.connection_pool.connection_kwargs.get("db", 0))

    def _check_policies(self, policies: set[str]) -> None:
        """Warn when Redis gets a policy that can evict pending data (the api checks only at start)."""
        unsafe = policies - SAFE_POLICIES
        for policy in sorted(unsafe - self._unsafe_policies):
            log.warning(
                "Redis maxmemory-policy is %s: it can evict changes not yet written to Postgres;"
                " use volatile-lru (docs/redis-memory.md)",
                policy,
            )
        self._unsafe_policies = unsafe
