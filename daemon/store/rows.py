"""The row filter: per shard, a Bloom filter of the cold keys Postgres may hold a row for.

A missing cold key is loaded from Postgres (daemon/store/cold.py). Most missing keys are new, though: a
user's first like of an item, a new item's first view. The filter lets a script tell those apart in
Redis: a *complete* filter without a key's bits proves Postgres has no row for it, and the script
creates the key empty at once, with no Postgres read and no second call (lua/lib/cold.lua). A key with
its bits set is loaded as before (it was evicted, or it is one of the ~1% false positives).

``eng:{s:N}:rows``: byte 0 is log2 of the filter's size m in bits, byte 1 is 1 once the filter is complete,
then m / 512 blocks of 64 bytes: a key's name sets five bits of one block (``offsets``), a blocked Bloom
filter, so that a script reads a key's bits with one GETRANGE. It covers counts (``c:``), creator counts
(``cr:``), like states (``lk:``) and subscriptions (``sb:``). Every script that creates one of those keys
sets its bits first, so a row only ever reaches Postgres for a key whose bits are set; the api's fallback
writes (Redis unreachable) get theirs when reconcile settles them (settle_fallbacks.lua).

A filter is built (``RowFilter.build``) when it is missing (a new Redis, Redis lost its data), has
another size than configured (``ENGAGEMENT_ROW_FILTER_MB``), or an operator asks: mark it incomplete with
the size to build (prepare_rows.lua: scripts stop trusting it and keep setting bits), add the bits of
every cold key Redis holds (SCAN) and of every Postgres row, then OR them in and mark it complete
(merge_rows.lua). A key created before the filter got its size and flushed after the Postgres scan
began is still in Redis during the SCAN (it is pinned until its flush, and the scan of Postgres starts
after the SCAN ends), so nothing is missed. The flusher checks the filters every
``ENGAGEMENT_ROW_FILTER_CHECK_S`` (``RowFilterKeeper``) and ``engagementd migrate`` builds them too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from daemon import keys
from daemon.errors import PG_ERRORS, REDIS_ERRORS
from daemon.settings import Settings
from lua import Scripts

log = logging.getLogger(__name__)

HEADER_BITS = 16  # byte 0: log2 of the size; byte 1: complete
KINDS = ("c", "cr", "lk", "sb")  # the cold keys the filter covers
# One build at a time: a lock with a TTL (losing it to eviction costs a second build, nothing else).
LOCK_KEY = f"{keys.PREFIX}:config:rows_build"
LOCK_SECONDS = 3_600
_FETCH = 10_000
_SCAN = 1_000
_WORDS = struct.Struct(">5I")

# (query, key of a row): every Postgres row behind a key the filter covers.
_SOURCES: tuple[tuple[str, Callable[[int, asyncpg.Record], str]], ...] = (
    ("SELECT content_id, user_id FROM likes", lambda s, r: keys.like_key(s, r[0], r[1])),
    (
        "SELECT creator_id, user_id FROM creator_subscriptions",
        lambda s, r: keys.subscription_key(s, r[0], r[1]),
    ),
    (
        "SELECT content_id FROM content_counters UNION SELECT content_id FROM content_unique_viewers"
        " UNION SELECT DISTINCT content_id FROM content_unique_viewers_daily",
        lambda s, r: keys.counts_key(s, r[0]),
    ),
    ("SELECT creator_id FROM creator_counters", lambda s, r: keys.creator_key(s, r[0])),
)


def offsets(name: str, log2: int) -> tuple[int, ...]:
    """The bit offsets of a key's name in a filter of 2**log2 bits, as lua/lib/cold.lua computes them:
    one 512-bit block (SHA-1 word 0), five bits in it (9 bits at a time of words 1 and 2)."""
    w0, w1, w2, _, _ = _WORDS.unpack(hashlib.sha1(name.encode()).digest())
    base = HEADER_BITS + (w0 & ((1 << (log2 - 9)) - 1)) * 512
    return (
        base + (w1 & 511),
        base + (w1 >> 9 & 511),
        base + (w1 >> 18 & 511),
        base + (w2 & 511),
        base + (w2 >> 9 & 511),
    )


def rows_key(shard: int) -> str:
    return f"{keys.tag(shard)}:rows"


def build_key(shard: int) -> str:
    return f"{keys.tag(shard)}:rows:build"


@dataclass(frozen=True, slots=True)
class ShardFilter:
    """One shard's filter as Redis holds it."""

    log2: int  # 0: no filter
    complete: bool
    ones: int  # bits set (of 2**log2)

    @property
    def fill(self) -> float:
        return self.ones / (1 << self.log2) if self.log2 else 0.0


class _Bits:
    """The bits of one build, per shard, in memory (bytearrays laid out as the Redis strings)."""

    def __init__(self, shards: Iterable[int], log2: int) -> None:
        self.log2 = log2
        self.of = {s: bytearray(2 + (1 << log2) // 8) for s in shards}

    def add(self, shard: int, name: str) -> None:
        bits = self.of.get(shard)
        if bits is None:
            return
        for offset in offsets(name, self.log2):
            bits[offset >> 3] |= 0x80 >> (offset & 7)


class RowFilter:
    def __init__(self, settings: Settings, redis: Any, scripts: Scripts) -> None:
        self.settings = settings
        self.redis = redis
        self.scripts = scripts

    async def status(self) -> list[ShardFilter]:
        """Every shard's filter (one pipeline)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for s in range(self.settings.shards):
                pipe.execute_command("BITFIELD_RO", rows_key(s), "GET", "u8", 0, "GET", "u8", 8)
                pipe.bitcount(rows_key(s), 2, -1)
            replies = await pipe.execute()
        out = []
        for header, ones in zip(replies[::2], replies[1::2], strict=True):
            log2, complete = int(header[0]), int(header[1])
            out.append(ShardFilter(log2, log2 > 0 and complete == 1, int(ones) if log2 else 0))
        return out

    async def stale(self) -> list[int]:
        """The shards whose filter is missing, incomplete or of another size than configured (with no
        filter configured: those that still hold one)."""
        want = self.settings.row_filter_log2
        return [s for s, f in enumerate(await self.status()) if (f.log2, f.complete) != (want, want > 0)]

    async def build(self, pool: asyncpg.Pool, shards: Iterable[int] | None = None) -> int:
        """Build the filters of ``shards`` (all by default) from what Redis and Postgres hold; returns
        how many were marked complete. With no filter configured, drops them instead."""
        todo = sorted(set(range(self.settings.shards) if shards is None else shards))
        log2 = self.settings.row_filter_log2
        if not todo:
            return 0
        await self.scripts.prepare_rows.call_many(self.redis, [([rows_key(s)], [log2]) for s in todo])
        if log2 == 0:
            return 0
        started = time.monotonic()
        bits = _Bits(todo, log2)
        held = await self._add_held(bits)
        rows = await self._add_rows(pool, bits)
        merged = await self.scripts.merge_rows.call_many(
            self.redis, [([rows_key(s), build_key(s)], [log2, bytes(bits.of[s])]) for s in todo]
        )
        done = sum(int(m) for m in merged)
        log.info(
            "row filters built for %d of %d shards (2^%d bits each) from %d Redis keys and %d Postgres rows"
            " in %.1fs",
            done, len(todo), log2, held, rows, time.monotonic() - started,
        )  # fmt: skip
        return done

    async def _add_held(self, bits: _Bits) -> int:
        """The bits of every cold key Redis holds (it may be flushed after the Postgres scan began)."""
        n = 0
        async for raw in self.redis.scan_iter(match=f"{keys.PREFIX}:{{s:*}}:*", count=_SCAN):
            name = raw.decode() if isinstance(raw, bytes) else raw
            end = name.find("}:")
            kind = name[end + 2 :].split(":", 1)[0]
            if end < 0 or kind not in KINDS:
                continue
            bits.add(int(name[name.index("{s:") + 3 : end]), name)
            n += 1
        return n

    async def _add_rows(self, pool: asyncpg.Pool, bits: _Bits) -> int:
        shards, n = self.settings.shards, 0
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            for query, key in _SOURCES:
                async for row in conn.cursor(query, prefetch=_FETCH):
                    n += 1
                    shard = keys.shard_of(row[0], shards)
                    if shard in bits.of:
                        bits.add(shard, key(shard, row))
                    if n % _FETCH == 0:
                        await asyncio.sleep(0)  # hashing is CPU: let the process's other tasks run
        return n

    async def ensure(self, pool: asyncpg.Pool) -> int:
        """Build the stale filters, unless another process is building (then 0)."""
        stale = await self.stale()
        if not stale:
            return 0
        token = uuid.uuid4().hex
        if not await self.redis.set(LOCK_KEY, token, nx=True, ex=LOCK_SECONDS):
            return 0
        try:
            return await self.build(pool, stale)
        finally:
            if await self.redis.get(LOCK_KEY) in (token, token.encode()):
                await self.redis.delete(LOCK_KEY)


class RowFilterKeeper:
    """The flusher's step, every ``ENGAGEMENT_ROW_FILTER_CHECK_S`` (a ``daemon.loops.Every``): build the
    stale filters and export their state."""

    def __init__(self, rows: RowFilter, pool: asyncpg.Pool, metrics: Any) -> None:
        self.rows = rows
        self.pool = pool
        self.metrics = metrics
        self._failing = False

    async def check(self) -> None:
        started = time.monotonic()
        built = await self.rows.ensure(self.pool)
        if built:
            self.metrics.row_filter_builds.inc(built)
            self.metrics.row_filter_build_seconds.set(time.monotonic() - started)
        status = await self.rows.status()
        self.metrics.row_filter_complete.set(sum(f.complete for f in status))
        self.metrics.row_filter_fill.set(max((f.fill for f in status), default=0.0))

    async def step(self) -> None:
        """``check``, its failure logged once per outage."""
        try:
            await self.check()
            self._failing = False
        except (*REDIS_ERRORS, *PG_ERRORS) as exc:
            if not self._failing:
                log.warning("row filter check failed (%s); retrying", exc)
            self._failing = True
