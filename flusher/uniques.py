"""Unique viewers to Postgres: the current HLL counts of the items whose HLLs changed.

``apply_views.lua`` adds ``<yyyymmdd>:<content_id>`` to the shard's ``uvtouch`` set when a drain
changed that item's daily or all-time HLL. Each pass, ``capture_uniques.lua`` moves up to
``UNIQUES_PER_CALL`` members per shard to ``uvbatch`` and returns their PFCOUNTs; they are upserted
into ``content_unique_viewers_daily`` and ``content_unique_viewers`` in one transaction, and only
then removed from ``uvbatch``. The values are absolute, so a repeated write (a flusher killed before
the SREM, two flushers on one shard) writes the same figures again: no ledger is needed. An upsert
never lowers a stored figure (GREATEST): a slower flusher cannot overwrite a newer count with an
older one, and a daily HLL that has expired (count 0) leaves the row as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import asyncpg

from daemon import keys
from lua import LuaScript

UNIQUES_PER_CALL = 1000

_DAILY = """
INSERT INTO content_unique_viewers_daily AS t (content_id, day, unique_viewers, updated_at)
SELECT content_id, day, n, now() FROM unnest($1::text[], $2::date[], $3::bigint[]) AS d (content_id, day, n)
ON CONFLICT (content_id, day) DO UPDATE
    SET unique_viewers = GREATEST(t.unique_viewers, EXCLUDED.unique_viewers), updated_at = now()
    WHERE t.unique_viewers < EXCLUDED.unique_viewers
"""
_ALL_TIME = """
INSERT INTO content_unique_viewers AS t (content_id, unique_viewers, updated_at)
SELECT content_id, n, now() FROM unnest($1::text[], $2::bigint[]) AS d (content_id, n)
ON CONFLICT (content_id) DO UPDATE
    SET unique_viewers = GREATEST(t.unique_viewers, EXCLUDED.unique_viewers), updated_at = now()
    WHERE t.unique_viewers < EXCLUDED.unique_viewers
"""


@dataclass(slots=True)
class Captured:
    members: dict[int, list[str]] = field(default_factory=dict)  # shard -> members taken
    daily: dict[tuple[str, date], int] = field(default_factory=dict)  # (content_id, day) -> count
    all_time: dict[str, int] = field(default_factory=dict)  # content_id -> count
    more: bool = False  # some shard has members left


async def capture(redis: Any, script: LuaScript, shards: int) -> Captured:
    calls = [
        ([keys.uv_touch_key(s), keys.uv_batch_key(s)], [keys.tag(s), UNIQUES_PER_CALL]) for s in range(shards)
    ]
    captured = Captured()
    for shard, result in enumerate(await script.call_many(redis, calls)):
        if isinstance(result, Exception):
            raise result
        captured.more = captured.more or bool(result[0])
        if len(result) == 1:
            continue
        members = captured.members[shard] = []
        for i in range(1, len(result), 3):
            member, day_count, all_count = result[i], int(result[i + 1]), int(result[i + 2])
            members.append(member)
            day, content_id = member[:8], member[9:]
            if day_count:
                captured.daily[(content_id, keys.day_date(day))] = day_count
            if all_count:
                captured.all_time[content_id] = all_count  # the same count for each day of one call
    return captured


async def write(conn: asyncpg.Connection, captured: Captured) -> int:
    """Upsert the captured counts in one transaction; returns the daily rows sent."""
    daily, all_time = captured.daily, captured.all_time
    async with conn.transaction():
        if daily:
            pairs = list(daily)
            await conn.execute(_DAILY, [c for c, _ in pairs], [d for _, d in pairs], list(daily.values()))
        if all_time:
            await conn.execute(_ALL_TIME, list(all_time), list(all_time.values()))
    return len(daily)


async def finish(redis: Any, captured: Captured) -> None:
    """Forget the written members (after the commit, never before)."""
    pipe = redis.pipeline(transaction=False)
    for shard, members in captured.members.items():
        pipe.srem(keys.uv_batch_key(shard), *members)
    await pipe.execute()


async def flush_uniques(redis: Any, pool: asyncpg.Pool, script: LuaScript, shards: int) -> int:
    """Write every pending unique viewers count; returns the daily rows written."""
    rows = 0
    while True:
        captured = await capture(redis, script, shards)
        if captured.members:
            async with pool.acquire() as conn:
                rows += await write(conn, captured)
            await finish(redis, captured)
        if not captured.more:
            return rows
