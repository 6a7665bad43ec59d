"""The content registry: content_id -> (creator_id, content_type).

``PUT /internal/v1/content/{contentId}`` (api/internal.py) and the ``media.published`` consumer record
who created an item and what it is: in Postgres (``content_registry``, the record) and in Redis
(``eng:{s:N}:reg:<content_id>``, the copy read to enrich events). The Redis copy is a cold key
(docs/redis-memory.md): it expires ``ENGAGEMENT_COUNTS_IDLE_TTL_S`` after it was written, and a lookup
that misses it reads Postgres and writes it back (also for an item the registry does not know, as
"", so unknown items cost Postgres once per lifetime, not once per event). A small per-process cache
(bounded, entries kept ``registry_cache_ttl_s``) sits in front of Redis.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg

from daemon import keys
from daemon.errors import PG_ERRORS
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.timefmt import utc_timestamp

log = logging.getLogger(__name__)

CONTENT_TYPES = ("VIDEO", "AUDIO")
UNKNOWN = ("", "")  # creator_id, content_type of an item the registry does not know

_UPSERT = """
INSERT INTO content_registry AS r (content_id, creator_id, content_type, updated_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (content_id) DO UPDATE SET
    creator_id = EXCLUDED.creator_id, content_type = EXCLUDED.content_type, updated_at = now()
RETURNING content_id, creator_id, content_type, updated_at
"""
_FIND = "SELECT content_id, creator_id, content_type FROM content_registry WHERE content_id = ANY($1::text[])"


class ContentRegistry:
    """content_id -> (creator_id, content_type): Postgres is the record, Redis the copy events read."""

    def __init__(
        self,
        settings: Settings,
        redis: Any,
        pool: Callable[[], Awaitable[asyncpg.Pool]],
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._pool = pool
        self._metrics = metrics
        self._cache: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._cache_size = settings.registry_cache_size
        self._ttl_s = settings.registry_cache_ttl_s

    async def put(self, content_id: str, creator_id: str, content_type: str) -> dict[str, Any]:
        """Store the record in Postgres, then its Redis copy; raises on either failure (the PUT is
        idempotent: the caller retries)."""
        pool = await self._pool()
        row = await pool.fetchrow(_UPSERT, content_id, creator_id, content_type)
        shard = keys.shard_of(content_id, self._settings.shards)
        copy = f"{creator_id}|{content_type}"
        await self._redis.set(keys.registry_key(shard, content_id), copy, ex=self._settings.counts_idle_ttl_s)
        self._remember(content_id, creator_id, content_type)
        return {
            "content_id": row["content_id"],
            "creator_id": row["creator_id"],
            "content_type": row["content_type"],
            "updated_at": utc_timestamp(row["updated_at"]),
        }

    def _remember(self, content_id: str, creator_id: str, content_type: str) -> None:
        cache = self._cache
        cache[content_id] = (creator_id, content_type, time.monotonic() + self._ttl_s)
        cache.move_to_end(content_id)
        while len(cache) > self._cache_size:
            cache.popitem(last=False)

    async def lookup(self, content_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """(creator_id, content_type) of each id; UNKNOWN for ids the registry does not hold.
        Cache misses cost one pipelined round trip (a GET per item); ids Redis no longer holds, one
        Postgres query (their copies written back). Raises on Redis errors; a Postgres error leaves
        those ids UNKNOWN (logged)."""
        found: dict[str, tuple[str, str]] = {}
        misses: list[str] = []
        now = time.monotonic()
        cache = self._cache
        for content_id in content_ids:
            hit = cache.get(content_id)
            if hit is not None and hit[2] > now:
                found[content_id] = (hit[0], hit[1])
                cache.move_to_end(content_id)
            else:
                misses.append(content_id)
        if not misses:
            return found
        shards = self._settings.shards
        pipe = self._redis.pipeline(transaction=False)
        for content_id in misses:
            pipe.get(keys.registry_key(keys.shard_of(content_id, shards), content_id))
        cold: list[str] = []
        for content_id, value in zip(misses, await pipe.execute(), strict=True):
            if value is None:
                cold.append(content_id)
            else:
                found[content_id] = self._copy(content_id, value)
        if cold:
            found.update(await self._load(cold))
        if self._metrics is not None:
            self._metrics.cold_hits.labels(kind="registry").inc(len(misses) - len(cold))
        return found

    def _copy(self, content_id: str, value: str) -> tuple[str, str]:
        if not value:  # "": Postgres has no record of the item
            return UNKNOWN
        creator_id, _, content_type = value.partition("|")
        self._remember(content_id, creator_id, content_type)
        return creator_id, content_type

    async def _load(self, content_ids: list[str]) -> dict[str, tuple[str, str]]:
        """The records of ids Redis no longer holds, from Postgres, written back (SET NX: a PUT in
        between wins)."""
        try:
            pool = await self._pool()
            rows = {r[0]: f"{r[1]}|{r[2]}" for r in await pool.fetch(_FIND, content_ids)}
        except PG_ERRORS as exc:
            log.warning("registry lookup of %d items: Postgres unavailable (%s)", len(content_ids), exc)
            return dict.fromkeys(content_ids, UNKNOWN)
        if self._metrics is not None:
            self._metrics.cold_loads.labels(kind="registry").inc(len(content_ids))
        shards, ttl = self._settings.shards, self._settings.counts_idle_ttl_s
        pipe = self._redis.pipeline(transaction=False)
        for content_id in content_ids:
            key = keys.registry_key(keys.shard_of(content_id, shards), content_id)
            pipe.set(key, rows.get(content_id, ""), ex=ttl, nx=True)
        await pipe.execute(raise_on_error=False)  # best effort: the next miss reads Postgres again
        return {c: self._copy(c, rows.get(c, "")) for c in content_ids}
