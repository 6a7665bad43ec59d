"""Unique viewers to Postgres: the current HLLs, and their counts, of the items whose HLLs changed.

``apply_views.lua`` adds ``<yyyymmdd>:<content_id>`` to the shard's ``uvtouch`` set when a drain
changed that item's daily HLL, and the content id to ``uvatouch`` when it changed its all-time HLL;
such an HLL carries no TTL until Postgres has it. Each pass, ``capture_uniques.lua`` moves up to
``UNIQUES_PER_CALL`` members of each set per shard to ``uvbatch`` / ``uvabatch`` and returns each
HLL's bytes with its PFCOUNT; both are upserted into ``content_unique_viewers_daily`` and
``content_unique_viewers`` in one transaction, and only then ``finish_uniques.lua`` forgets the
members and gives the HLLs their TTL back (docs/redis-memory.md). The values are absolute, so a
repeated write (a flusher killed before the finish, two flushers on one shard) writes the same figures
again: no ledger is needed. An upsert never lowers a stored figure (GREATEST) nor replaces an HLL by
one with a smaller count: a slower flusher cannot overwrite a newer HLL with an older one (a union only
grows, and so does its count). A row written before Postgres kept HLLs takes the first one it gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import asyncpg

from daemon import keys
from daemon.store import Store

SHARDS_PER_ROUND = 16  # shards captured, written and finished together: bounds one pipeline's bytes
ROUNDS_PER_PASS = 50  # per group of shards and flusher pass: the counters' flush never waits for long

_DAILY = """
INSERT INTO content_unique_viewers_daily AS t (content_id, day, unique_viewers, hll, updated_at)
SELECT content_id, day, n, hll, now()
FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bytea[]) AS d (content_id, day, n, hll)
ON CONFLICT (content_id, day) DO UPDATE SET
    unique_viewers = GREATEST(t.unique_viewers, EXCLUDED.unique_viewers),
    hll = CASE WHEN t.hll IS NULL OR t.unique_viewers <= EXCLUDED.unique_viewers
               THEN EXCLUDED.hll ELSE t.hll END,
    updated_at = now()
"""
_ALL_TIME = """
INSERT INTO content_unique_viewers AS t (content_id, unique_viewers, hll, updated_at)
SELECT content_id, n, hll, now() FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS d (content_id, n, hll)
ON CONFLICT (content_id) DO UPDATE SET
    unique_viewers = GREATEST(t.unique_viewers, EXCLUDED.unique_viewers),
    hll = CASE WHEN t.hll IS NULL OR t.unique_viewers <= EXCLUDED.unique_viewers
               THEN EXCLUDED.hll ELSE t.hll END,
    updated_at = now()
"""


@dataclass(slots=True)
class Captured:
    members: dict[int, tuple[list[str], list[str]]] = field(default_factory=dict)  # shard -> taken
    daily: dict[tuple[str, date], tuple[int, bytes]] = field(default_factory=dict)  # -> count, HLL
    all_time: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # content_id -> count, HLL
    more: bool = False  # some shard has members left


async def capture(store: Store, shards: Sequence[int]) -> Captured:
    captured = Captured()
    for shard, result in zip(shards, await store.capture_uniques(shards), strict=True):
        captured.more = captured.more or bool(result[0])
        daily_n = int(result[1])
        entries = [(result[i].decode(), int(result[i + 1]), result[i + 2]) for i in range(2, len(result), 3)]
        if not entries:
            continue
        daily, all_time = entries[:daily_n], entries[daily_n:]
        captured.members[shard] = ([m for m, _, _ in daily], [c for c, _, _ in all_time])
        for member, count, hll in daily:
            if count and hll:  # an HLL that no longer exists (never, while a member): nothing to write
                captured.daily[(member[9:], keys.day_date(member[:8]))] = (count, hll)
        for content_id, count, hll in all_time:
            if count and hll:
                captured.all_time[content_id] = (count, hll)
    return captured


async def write(conn: asyncpg.Connection, captured: Captured) -> int:
    """Upsert the captured counts and HLLs in one transaction; returns the daily rows sent."""
    daily, all_time = captured.daily, captured.all_time
    async with conn.transaction():
        if daily:
            pairs = list(daily)
            values = list(daily.values())
            await conn.execute(
                _DAILY,
                [c for c, _ in pairs],
                [d for _, d in pairs],
                [n for n, _ in values],
                [h for _, h in values],
            )
        if all_time:
            values = list(all_time.values())
            await conn.execute(_ALL_TIME, list(all_time), [n for n, _ in values], [h for _, h in values])
    return len(daily)


async def flush_uniques(store: Store, pool: asyncpg.Pool) -> tuple[int, bool]:
    """Write the pending unique viewers HLLs; returns the daily rows written and whether every touch set
    was emptied. Shards go by groups of
    SHARDS_PER_ROUND, each group until its touch sets are empty (or ROUNDS_PER_PASS rounds: the rest
    waits for the next pass), so that one round trip carries at most SHARDS_PER_ROUND x 2 x
    UNIQUES_PER_CALL HLLs."""
    rows, done, settings = 0, True, store.settings
    for start in range(0, settings.shards, SHARDS_PER_ROUND):
        group = list(range(start, min(start + SHARDS_PER_ROUND, settings.shards)))
        for _ in range(ROUNDS_PER_PASS):
            captured = await capture(store, group)
            if captured.members:
                async with pool.acquire() as conn:
                    rows += await write(conn, captured)
                await store.finish_uniques(captured.members)  # after the commit, never before
            if not captured.more:
                break
        else:
            done = False
    return rows, done
