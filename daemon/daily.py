"""An item's daily views, unique viewers and watch seconds (GET /api/v1/content/{id}/stats/daily).

Views and watch seconds are counted per UTC day as views are: the day of the buffer cut, carried by
each drain (``apply_views.lua``) and written by the flusher to ``content_daily`` in the same transaction
as ``content_counters``, exactly once. A day's figure is that row plus what Redis still holds pending
for it (``read_daily.lua``: the drains not yet captured, and those captured but not yet committed).

The two reads are made consistent with the flush ledger: the shard's latest ledger entry is read before
Redis and again with the rows; if a flush of the shard committed in between, the read is made again
(a commit moves counts from Redis to Postgres, and either side alone would then be off). A captured
batch already in the ledger is in the rows, so its pending part is not added.

Unique viewers per day: the HLL Redis holds for the day (PFCOUNT) when it has one, else the figure
the flusher last wrote (``content_unique_viewers_daily``).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from daemon import keys
from daemon.core import Core
from daemon.errors import PG_ERRORS, REDIS_ERRORS, is_unavailable

MAX_DAYS = 366
_ATTEMPTS = 5
_MARKER = "SELECT max(flushed_at) AS at, count(*) AS n FROM flush_batches WHERE shard = $1"
_ROWS = """
SELECT d.day, coalesce(c.views, 0) AS views, coalesce(c.watch_seconds, 0) AS watch_seconds,
       coalesce(u.unique_viewers, 0) AS unique_viewers
FROM (SELECT generate_series($2::date, $3::date, interval '1 day')::date AS day) AS d
LEFT JOIN content_daily c ON c.content_id = $1 AND c.day = d.day
LEFT JOIN content_unique_viewers_daily u ON u.content_id = $1 AND u.day = d.day
ORDER BY d.day
"""
_COMMITTED = "SELECT 1 FROM flush_batches WHERE batch_id = $1"


async def daily_stats(core: Core, content_id: str, first: date, last: date) -> dict[str, Any]:
    """``{"content_id", "days": [{"date", "views", "unique_viewers", "watch_seconds"}]}``, one entry per
    day from ``first`` to ``last`` (at most MAX_DAYS), zeros where nothing happened."""
    shard = keys.shard_of(content_id, core.settings.shards)
    today = keys.uv_day(core.settings.unique_viewers_day)
    try:
        pool = await core.pool()
        async with pool.acquire() as conn:
            rows, pending, captured = await _consistent_read(core, conn, content_id, shard, (first, last))
    except PG_ERRORS as exc:
        raise core.unavailable("Daily stats are temporarily unavailable.") from exc
    days = {r["day"]: [int(r["views"]), int(r["watch_seconds"]), int(r["unique_viewers"])] for r in rows}
    for flat in (pending, captured):
        for i in range(0, len(flat), 3):
            day = keys.day_date(flat[i] or today)
            if day in days:
                days[day][0] += int(flat[i + 1])
                days[day][1] += int(flat[i + 2])
    await _live_viewers(core, content_id, days, today)
    return {
        "content_id": content_id,
        "days": [
            {"date": d.isoformat(), "views": v, "unique_viewers": u, "watch_seconds": w}
            for d, (v, w, u) in sorted(days.items())
        ],
    }


async def _consistent_read(
    core: Core, conn: Any, content_id: str, shard: int, days: tuple[date, date]
) -> tuple[list[Any], list[Any], list[Any]]:
    """(Postgres rows of the days, Redis's pending [day, views, watch, ...] not captured, and captured
    but not committed), read between two unchanged ledger markers of the shard. With Redis unreachable:
    Postgres's rows alone (what the flusher has written)."""
    for _ in range(_ATTEMPTS):
        before = await conn.fetchrow(_MARKER, shard)
        try:
            batch_id, pending, captured = await core.store.read_daily(content_id)
        except REDIS_ERRORS as exc:
            if not is_unavailable(exc):
                raise
            return await conn.fetch(_ROWS, content_id, *days), [], []
        rows = await conn.fetch(_ROWS, content_id, *days)
        if batch_id and await conn.fetchval(_COMMITTED, batch_id) is not None:
            captured = []  # in the rows already
        if tuple(await conn.fetchrow(_MARKER, shard)) == tuple(before):
            return rows, pending, captured
    raise core.unavailable("Daily stats are changing too fast to read; retry.")


async def _live_viewers(core: Core, content_id: str, days: dict[date, list[int]], today: str) -> None:
    """The days whose HLL Redis may still hold (its lifetime back from today) take Redis's figure."""
    newest = keys.day_date(today)
    lifetime = timedelta(seconds=core.settings.unique_viewers_daily_ttl_s) + timedelta(days=1)
    recent = [d for d in days if newest - lifetime <= d <= newest]
    if not recent:
        return
    try:
        found = await core.store.daily_viewers(content_id, [d.strftime("%Y%m%d") for d in recent])
    except REDIS_ERRORS:
        return  # Postgres's figures stand
    for d in recent:
        n = found.get(d.strftime("%Y%m%d"))
        if n is not None:
            days[d][2] = n
