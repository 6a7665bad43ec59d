"""Counts of content items: Redis's copy, Postgres when Redis no longer holds it or is unavailable.

Redis holds an item's counts only while the item is in use (docs/redis-memory.md): a read that finds
them missing reads Postgres (source ``postgres``) and seeds Redis, so the next read is Redis's. The
same for the viewer's like state (a "none" state for ENGAGEMENT_STATE_READ_TTL_S only: readers of items
they never liked are many) and for unique viewers HLLs Postgres holds. Those reads count in
``engagement_cold_hits_total`` / ``engagement_cold_loads_total`` like the store's.

``read_stats`` answers any number of items with one Redis round trip (one ``read_counts`` call, or on
Redis Cluster one per shard involved, through the api's auto-pipeliner), one Postgres query for the
items Redis could not answer in full, and one seed call.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from daemon import keys
from daemon.core import Core
from daemon.errors import PG_ERRORS, REDIS_ERRORS
from daemon.ids import STATE_NAMES
from daemon.pipeliner import pipeliner_for
from daemon.store import ItemCounts
from daemon.store.cold import counts_seed

log = logging.getLogger(__name__)

STAT_FIELDS = keys.COUNTERS  # views, likes, dislikes, comments, shares, watch_seconds, completions, ...
# HyperLogLog estimates (standard error 0.81%), exact for small counts; see daemon/views/viewers.py.
UNIQUE_FIELDS = ("unique_viewers", "unique_viewers_today")

_FROM_POSTGRES = f"""
SELECT i.content_id, {", ".join(f"c.{name}" for name in keys.COUNTERS)},
       u.unique_viewers, u.hll IS NOT NULL AS uva, d.unique_viewers AS unique_viewers_today,
       (SELECT max(day) FROM content_unique_viewers_daily
        WHERE content_id = i.content_id AND hll IS NOT NULL) AS uvd,
       l.value AS viewer
FROM unnest($1::text[]) AS i (content_id)
LEFT JOIN content_counters c ON c.content_id = i.content_id
LEFT JOIN content_unique_viewers u ON u.content_id = i.content_id
LEFT JOIN content_unique_viewers_daily d ON d.content_id = i.content_id AND d.day = $2
LEFT JOIN likes l ON l.content_id = i.content_id AND l.user_id = $3
"""


_NO_ROW = {"unique_viewers": 0, "unique_viewers_today": 0, "viewer": 0}


@dataclass(slots=True)
class ItemStats:
    body: dict[str, Any]  # content_id, STAT_FIELDS, UNIQUE_FIELDS, and viewer_state with a user
    source: str  # "redis": every count from Redis; "postgres": the counts from Postgres


async def read_stats(core: Core, content_ids: list[str], user: str | None) -> list[ItemStats]:
    """The stats of each item, in order (an id may repeat); ``user``: the viewer, for its like state.
    Raises ``Unavailable`` when Postgres is needed and unreachable too."""
    distinct = list(dict.fromkeys(content_ids))
    day = keys.uv_day(core.settings.unique_viewers_day)
    items: dict[str, ItemCounts] = {}
    try:
        found = await core.store.read_items(distinct, user, day, pipeliner_for(core))
        items = dict(zip(distinct, found, strict=True))
    except REDIS_ERRORS as exc:
        log.warning("stats from Postgres: Redis unavailable (%s)", exc)
    wanted = _count(core, items, user, day) if items else distinct
    rows: dict[str, Any] = {}
    if wanted:
        started = time.perf_counter()
        rows = await _from_postgres(core, wanted, day, user)
        if items:
            core.metrics.cold_load_seconds.observe(time.perf_counter() - started)
    out = {c: _stats(c, items.get(c), rows.get(c), user) for c in distinct}
    if items and wanted:
        await _seed(core, {c: items[c] for c in wanted}, rows, user)
    return [out[c] for c in content_ids]


def _stats(content_id: str, item: ItemCounts | None, row: Any, user: str | None) -> ItemStats:
    body: dict[str, Any] = {"content_id": content_id}
    source = "redis"
    counts = item.counts if item is not None else None
    if counts is None:
        counts = {f: int(row[f] or 0) for f in keys.COUNTERS}
        source = "postgres"
    body.update({f: int(counts.get(f, 0)) for f in STAT_FIELDS})
    all_time = item.unique_viewers if item is not None else None
    today = item.unique_viewers_today if item is not None else None
    row = row or _NO_ROW  # Redis answered everything: a missing HLL is an empty one
    body["unique_viewers"] = all_time if all_time is not None else int(row["unique_viewers"] or 0)
    body["unique_viewers_today"] = today if today is not None else int(row["unique_viewers_today"] or 0)
    if user is not None:
        viewer = item.state if item is not None and item.state is not None else int(row["viewer"] or 0)
        body["viewer_state"] = STATE_NAMES[viewer]
    return ItemStats(body, source)


def _missing(item: ItemCounts, user: str | None, day: str) -> dict[str, int]:
    """The cold keys of this read Redis did not hold, by kind (a missing HLL is an empty one unless
    Postgres holds it, which the counts' flags say; with the counts missing, no HLL is read)."""
    counts = item.counts
    missing = {"counts": int(counts is None), "like": int(user is not None and item.state is None)}
    if counts is not None:
        all_time = item.unique_viewers is None and bool(counts.get("uva"))
        today = item.unique_viewers_today is None and str(counts.get("uvd", "")) >= day
        missing["viewers"] = int(all_time) + int(today)
    return missing


def _count(core: Core, items: dict[str, ItemCounts], user: str | None, day: str) -> list[str]:
    """Count the cold hits and loads of a read (one metric update per kind); the items Redis did not
    answer in full."""
    hits: Counter[str] = Counter()
    loads: Counter[str] = Counter()
    wanted = []
    for content_id, item in items.items():
        missing = _missing(item, user, day)
        if any(missing.values()):
            wanted.append(content_id)
            loads.update(missing)
        hits["counts"] += 1 - missing["counts"]
        if user is not None:
            hits["like"] += 1 - missing["like"]
    core.store.loader.add_hits({kind: n for kind, n in hits.items() if n})
    for kind, n in loads.items():
        if n:
            core.metrics.cold_loads.labels(kind=kind).inc(n)
    return wanted


async def _seed(core: Core, items: dict[str, ItemCounts], rows: dict[str, Any], user: str | None) -> None:
    """Keep the counts and the viewer's states Postgres gave in Redis for the next read (best effort)."""
    tokens: dict[str, str] = {}
    values: dict[str, object] = {}
    ttls: dict[str, int] = {}
    for content_id, item in items.items():
        row = rows[content_id]
        shard = keys.shard_of(content_id, core.settings.shards)
        tokens.update(item.tokens)
        if item.counts is None:
            values[keys.counts_key(shard, content_id)] = counts_seed(row)
        if user is not None and item.state is None:
            state_key = keys.like_key(shard, content_id, user)
            values[state_key] = str(int(row["viewer"] or 0))
            if values[state_key] == "0":
                ttls[state_key] = core.settings.state_read_ttl_s
    if not values:
        return
    try:
        await core.store.seed(tokens, values, ttls)
    except REDIS_ERRORS as exc:
        log.info("cold keys not seeded (%s)", exc)


async def _from_postgres(core: Core, content_ids: list[str], day: str, user: str | None) -> dict[str, Any]:
    try:
        pool = await core.pool()
        found = await pool.fetch(_FROM_POSTGRES, content_ids, keys.day_date(day), user)
    except PG_ERRORS as exc:
        log.warning("stats unavailable: Postgres unreachable too (%s)", exc)
        raise core.unavailable("Counts are temporarily unavailable.") from None
    return {row["content_id"]: row for row in found}
