"""The content registry: content_id -> (creator_id, content_type).

``PUT /internal/v1/content/{contentId}`` (api/internal.py) and the ``media.published`` consumer record
who created an item and what it is: in Postgres (``content_registry``, the record) and in Redis
(``eng:{s:N}:registry``, the copy read to enrich events), so that enriching an event never costs a
Postgres query. A small per-process cache (bounded, entries kept ``registry_cache_ttl_s``) sits in
front of Redis.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg

from daemon import keys
from daemon.settings import Settings
from daemon.timefmt import utc_timestamp

CONTENT_TYPES = ("VIDEO", "AUDIO")
UNKNOWN = ("", "")  # creator_id, content_type of an item the registry does not know

_UPSERT = """
INSERT INTO content_registry AS r (content_id, creator_id, content_type, updated_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (content_id) DO UPDATE SET
    creator_id = EXCLUDED.creator_id, content_type = EXCLUDED.content_type, updated_at = now()
RETURNING content_id, creator_id, content_type, updated_at
"""


class ContentRegistry:
    """content_id -> (creator_id, content_type): Postgres is the record, Redis the copy events read."""

    def __init__(self, settings: Settings, redis: Any, pool: Callable[[], Awaitable[asyncpg.Pool]]) -> None:
        self._settings = settings
        self._redis = redis
        self._pool = pool
        self._cache: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._cache_size = settings.registry_cache_size
        self._ttl_s = settings.registry_cache_ttl_s

    async def put(self, content_id: str, creator_id: str, content_type: str) -> dict[str, Any]:
        """Store the record in Postgres, then its Redis copy; raises on either failure (the PUT is
        idempotent: the caller retries)."""
        pool = await self._pool()
        row = await pool.fetchrow(_UPSERT, content_id, creator_id, content_type)
        shard = keys.shard_of(content_id, self._settings.shards)
        await self._redis.hset(keys.registry_key(shard), content_id, f"{creator_id}|{content_type}")
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
        Cache misses cost one pipelined round trip (an HMGET per shard). Raises on Redis errors."""
        found: dict[str, tuple[str, str]] = {}
        misses: dict[int, list[str]] = {}
        now = time.monotonic()
        cache = self._cache
        shards = self._settings.shards
        for content_id in content_ids:
            hit = cache.get(content_id)
            if hit is not None and hit[2] > now:
                found[content_id] = (hit[0], hit[1])
                cache.move_to_end(content_id)
            else:
                misses.setdefault(keys.shard_of(content_id, shards), []).append(content_id)
        if not misses:
            return found
        pipe = self._redis.pipeline(transaction=False)
        for shard, ids in misses.items():
            pipe.hmget(keys.registry_key(shard), ids)
        results = await pipe.execute()
        for ids, values in zip(misses.values(), results, strict=True):
            for content_id, value in zip(ids, values, strict=True):
                if value is None:  # not cached: a record registered later must be seen soon
                    found[content_id] = UNKNOWN
                    continue
                creator_id, _, content_type = value.partition("|")
                found[content_id] = (creator_id, content_type)
                self._remember(content_id, creator_id, content_type)
        return found
