"""Counts of one content item: Redis's copy, Postgres when Redis no longer holds it or is unavailable.

Redis holds an item's counts only while the item is in use (docs/redis-memory.md): a read that finds
them missing reads Postgres (``X-Counts-Source: postgres``) and seeds Redis, so the next read is
Redis's. The same for the viewer's like state (a "none" state for ENGAGEMENT_STATE_READ_TTL_S only:
readers of items they never liked are many) and for unique viewers HLLs Postgres holds. Those reads
count in ``engagement_cold_hits_total`` / ``engagement_cold_loads_total`` like the store's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.instrument import instrumented
from api.services import Services
from daemon import keys
from daemon.errors import PG_ERRORS
from daemon.ids import STATE_NAMES
from daemon.store import ItemCounts
from daemon.store.cold import counts_seed

log = logging.getLogger(__name__)

STATS_ROUTE = "/api/v1/content/{contentId}/stats"
STAT_FIELDS = ("views", "likes", "dislikes", "comments", "shares")
# HyperLogLog estimates (standard error 0.81%), exact for small counts; see daemon/views/viewers.py.
UNIQUE_FIELDS = ("unique_viewers", "unique_viewers_today")

_FROM_POSTGRES = f"""
SELECT {", ".join(f"c.{name}" for name in keys.COUNTERS)},
       u.unique_viewers, u.hll IS NOT NULL AS uva,
       (SELECT unique_viewers FROM content_unique_viewers_daily WHERE content_id = $1 AND day = $2)
           AS unique_viewers_today,
       (SELECT max(day) FROM content_unique_viewers_daily WHERE content_id = $1 AND hll IS NOT NULL) AS uvd,
       (SELECT value FROM likes WHERE user_id = $3 AND content_id = $1) AS viewer
FROM (SELECT 1) AS one
LEFT JOIN content_counters c ON c.content_id = $1
LEFT JOIN content_unique_viewers u ON u.content_id = $1
"""


@instrumented(STATS_ROUTE)
async def get_stats(request: Request) -> Response:
    services: Services = request.app.state.services
    content_id = services.bodies.content_id(request.path_params["contentId"])
    principal = services.auth.authenticate(request.headers.get("authorization"))
    user = principal.sub if principal is not None else None
    day = keys.uv_day(services.settings.unique_viewers_day)
    item: ItemCounts | None = None
    try:
        (item,) = await services.store.read_items([content_id], user, day)
    except (RedisError, OSError) as exc:
        log.warning("stats from Postgres: Redis unavailable (%s)", exc)
    body: dict[str, Any] = {"content_id": content_id}
    if item is not None:
        _count(services, item, user, day)
    if item is not None and item.counts is not None and _complete(item, user, day):
        counts = item.counts
        body.update({f: counts.get(f, 0) for f in STAT_FIELDS})
        body["unique_viewers"] = item.unique_viewers or 0
        body["unique_viewers_today"] = item.unique_viewers_today or 0
        viewer = item.state
        source = "redis"
    else:  # Redis down, or it no longer holds some of it: Postgres, then seed what was missing
        started = time.perf_counter()
        row = await _from_postgres(services, content_id, day, user)
        if item is not None:
            services.metrics.cold_load_seconds.observe(time.perf_counter() - started)
        viewer = int(row["viewer"] or 0)
        source = "redis"
        if item is None or item.counts is None:
            counts = {f: int(row[f] or 0) for f in keys.COUNTERS}
            source = "postgres"
        else:
            counts = item.counts
        body.update({f: counts.get(f, 0) for f in STAT_FIELDS})
        all_time, today = item.unique_viewers if item else None, item.unique_viewers_today if item else None
        body["unique_viewers"] = all_time if all_time is not None else int(row["unique_viewers"] or 0)
        body["unique_viewers_today"] = today if today is not None else int(row["unique_viewers_today"] or 0)
        if item is not None:
            await _seed(services, item, content_id, user, row)
    if principal is not None:
        body["viewer_state"] = STATE_NAMES[viewer or 0]
    return json_response(body, headers={"X-Counts-Source": source})


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


def _complete(item: ItemCounts, user: str | None, day: str) -> bool:
    """Whether Redis answered everything."""
    return not any(_missing(item, user, day).values())


def _count(services: Services, item: ItemCounts, user: str | None, day: str) -> None:
    missing = _missing(item, user, day)
    needed = {"counts": 1, "like": int(user is not None)}
    services.store.loader.add_hits(
        {kind: n - missing[kind] for kind, n in needed.items() if n > missing[kind]}
    )
    for kind, n in missing.items():
        if n:
            services.metrics.cold_loads.labels(kind=kind).inc(n)


async def _seed(services: Services, item: ItemCounts, content_id: str, user: str | None, row: Any) -> None:
    """Keep the counts and the viewer's state Postgres gave in Redis for the next read (best effort)."""
    shard = keys.shard_of(content_id, services.settings.shards)
    values: dict[str, object] = {}
    if item.counts is None:
        values[keys.counts_key(shard, content_id)] = counts_seed(row)
    ttls = {}
    if user is not None and item.state is None:
        state_key = keys.like_key(shard, content_id, user)
        values[state_key] = str(int(row["viewer"] or 0))
        if values[state_key] == "0":
            ttls[state_key] = services.settings.state_read_ttl_s
    if not values:
        return
    try:
        await services.store.seed(item.tokens, values, ttls)
    except (RedisError, OSError) as exc:
        log.info("cold keys not seeded (%s)", exc)


async def _from_postgres(services: Services, content_id: str, day: str, user: str | None) -> Any:
    try:
        pool = await services.pool()
        return await pool.fetchrow(_FROM_POSTGRES, content_id, keys.day_date(day), user)
    except PG_ERRORS as exc:
        log.warning("stats unavailable: Postgres unreachable too (%s)", exc)
        retry = {"Retry-After": str(services.settings.buffer_retry_after_s)}
        raise ApiError(503, "unavailable", "Counts are temporarily unavailable.", retry) from None
