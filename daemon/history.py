"""Watch history: resume positions written through Redis, coalesced, and flushed to Postgres in batches.

A heartbeat (``record``) is one ``record_history`` script call in the user's slot (N = shard of the user
id): it stamps the entry with Redis' clock and writes it to the user's hash ``hist:<user_id>`` (what
reads merge with Postgres) and to the shard's ``hdelta`` (what the flusher captures with the other
deltas, under the same lease and batch id). Heartbeats of one user on one item between two flushes
overwrite each other: the flusher writes one row per (user, item) per pass, newer ``last_watched_at``
wins. After its commit it drops the entries Postgres now has from ``hist:<user_id>`` (``trim``) unless a
newer heartbeat replaced them.

Clearing (``purge_history``, for DELETE /users/me/history and the GDPR purge) removes the user's Redis
entries, records the clear's time in ``watch_history_clears`` and deletes the rows, so that a heartbeat
already captured by a flusher cannot bring a cleared entry back (see flusher/history_writer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from daemon import keys
from daemon.store import Store
from daemon.timefmt import utc_timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
POSITION_MAX = 2**31 - 1  # position_seconds is a Postgres integer

_SELECT_ONE = """
SELECT last_watched_at, progress_pct, position_seconds FROM watch_history
WHERE user_id = $1 AND content_id = $2
"""
_SELECT_PAGE = """
SELECT content_id, last_watched_at, progress_pct, position_seconds FROM watch_history
WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (last_watched_at, content_id) < ($2, $3::text))
ORDER BY last_watched_at DESC, content_id DESC
LIMIT $4
"""
_SELECT_SOME = """
SELECT content_id, last_watched_at, progress_pct, position_seconds FROM watch_history
WHERE user_id = $1 AND content_id = ANY($2::text[])
"""
_UPSERT_NOW = """
INSERT INTO watch_history AS w (user_id, content_id, last_watched_at, progress_pct, position_seconds)
VALUES ($1, $2, clock_timestamp(), $3, $4)
ON CONFLICT (user_id, content_id) DO UPDATE SET
    last_watched_at = EXCLUDED.last_watched_at,
    progress_pct = EXCLUDED.progress_pct,
    position_seconds = EXCLUDED.position_seconds
WHERE EXCLUDED.last_watched_at >= w.last_watched_at
RETURNING last_watched_at, progress_pct, position_seconds
"""
# First statement of the clear: ROW EXCLUSIVE on watch_history_clears waits for a flusher transaction
# that holds SHARE on it, and holds the next one back until the clear commits.
_LOCK_CLEARS = "LOCK TABLE watch_history_clears IN ROW EXCLUSIVE MODE"
_CLEAR = """
INSERT INTO watch_history_clears AS c (user_id, cleared_at) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET cleared_at = GREATEST(c.cleared_at, EXCLUDED.cleared_at)
"""
_DELETE_ROWS = "DELETE FROM watch_history WHERE user_id = $1"
_PRUNE_CLEARS = "DELETE FROM watch_history_clears WHERE cleared_at < now() - make_interval(days => $1)"


@dataclass(frozen=True, slots=True)
class Entry:
    content_id: str
    ts_us: int  # last_watched_at, microseconds since the epoch
    progress_pct: float
    position_seconds: int

    def as_json(self) -> dict[str, Any]:
        return {
            "content_id": self.content_id,
            "progress_pct": self.progress_pct,
            "position_seconds": self.position_seconds,
            "last_watched_at": iso(self.ts_us),
        }

    @property
    def order(self) -> tuple[int, str]:
        """The list's sort key, most recent first: compared descending."""
        return (self.ts_us, self.content_id)


def to_us(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(ts_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=ts_us)


def iso(ts_us: int) -> str:
    """``2026-11-22T02:00:00.123456Z`` (daemon.timefmt)."""
    return utc_timestamp(from_us(ts_us))


def pct(value: float) -> float:
    """progress_pct is kept to 2 decimals (Postgres stores it as real)."""
    return round(float(value), 2)


def progress_value(progress_pct: float, position_seconds: int) -> str:
    """The ``<pct>|<pos>`` part of a stored entry."""
    return f"{pct(progress_pct)!r}|{position_seconds}"


def parse_value(content_id: str, value: str) -> Entry:
    """An entry from its Redis value ``<ts_us>|<pct>|<pos>``."""
    ts, progress, position = value.split("|")
    return Entry(content_id, int(ts), float(progress), int(position))


def _row_entry(content_id: str, row: asyncpg.Record) -> Entry:
    return Entry(content_id, to_us(row["last_watched_at"]), pct(row["progress_pct"]), row["position_seconds"])


# -- writes ------------------------------------------------------------------------------------------


async def record(store: Store, user_id: str, content_id: str, progress: float, position: int) -> Entry:
    """One heartbeat through Redis (raises redis-py's errors: the caller decides on the fallback)."""
    value = await store.record_history(user_id, content_id, progress_value(progress, position))
    return parse_value(content_id, value)


async def record_in_postgres(
    pool: asyncpg.Pool, user_id: str, content_id: str, progress: float, position: int
) -> Entry:
    """One heartbeat straight to Postgres (Redis unreachable), stamped with Postgres' clock; a row
    stamped later (a newer heartbeat flushed meanwhile) is kept."""
    row = await pool.fetchrow(_UPSERT_NOW, user_id, content_id, pct(progress), position)
    if row is None:  # the stored row is newer: it is the resume position
        row = await pool.fetchrow(_SELECT_ONE, user_id, content_id)
    return _row_entry(content_id, row)


async def purge_history(store: Store, pool: asyncpg.Pool, user_id: str) -> int:
    """Forget a user's whole watch history, in Redis and Postgres; returns the Postgres rows deleted.

    Idempotent and safe to re-run after a crash at any point: one Postgres transaction, opened first,
    around the Redis call. Raises redis-py's or asyncpg's errors: Redis must be reachable, or
    heartbeats still pending there would come back after the next flush.
    """
    async with pool.acquire() as conn, conn.transaction():
        # Postgres first: when it is unreachable nothing is cleared, not only the Redis half.
        await conn.execute(_LOCK_CLEARS)
        cleared_us, _ = await store.clear_history(user_id)
        await conn.execute(_CLEAR, user_id, from_us(int(cleared_us)))
        status = await conn.execute(_DELETE_ROWS, user_id)
    return int(status.split()[-1])


async def prune_clears(conn: asyncpg.Connection, retention_days: int) -> int:
    status = await conn.execute(_PRUNE_CLEARS, retention_days)
    return int(status.split()[-1])


# -- reads -------------------------------------------------------------------------------------------


async def pending(redis: Any, shards: int, user_id: str, content_id: str | None = None) -> dict[str, Entry]:
    """The user's unflushed entries (all, or the one of ``content_id``). Raises on Redis errors."""
    key = keys.history_key(keys.shard_of(user_id, shards), user_id)
    if content_id is not None:
        value = await redis.hget(key, content_id)
        return {} if value is None else {content_id: parse_value(content_id, value)}
    return {c: parse_value(c, v) for c, v in (await redis.hgetall(key)).items()}


async def stored(pool: asyncpg.Pool, user_id: str, content_id: str) -> Entry | None:
    row = await pool.fetchrow(_SELECT_ONE, user_id, content_id)
    return None if row is None else _row_entry(content_id, row)


async def page(
    pool: asyncpg.Pool,
    user_id: str,
    unflushed: dict[str, Entry],
    limit: int,
    after: tuple[int, str] | None,
) -> tuple[list[Entry], Entry | None]:
    """One page of the user's history, most recently watched first, after the cursor ``after``:
    Postgres rows merged with the unflushed entries (for each item the newer of the two wins).
    Returns the entries and the last one when more follow (the next cursor), else None."""
    fetch = limit + len(unflushed) + 1  # rows of items whose newer pending entry moves them are dropped
    since, since_id = (from_us(after[0]), after[1]) if after else (None, None)
    async with pool.acquire() as conn:
        rows = await conn.fetch(_SELECT_PAGE, user_id, since, since_id, fetch)
        elsewhere = await conn.fetch(_SELECT_SOME, user_id, list(unflushed)) if unflushed else []
    newest = dict(unflushed)
    for row in [*elsewhere, *rows]:
        entry = _row_entry(row["content_id"], row)
        current = newest.get(entry.content_id)
        if current is None or entry.ts_us > current.ts_us:
            newest[entry.content_id] = entry
    candidates = {r["content_id"] for r in rows} | set(unflushed)
    chosen = [newest[c] for c in candidates if after is None or newest[c].order < after]
    chosen.sort(key=lambda e: e.order, reverse=True)
    if len(chosen) > limit:
        return chosen[:limit], chosen[limit - 1]
    return chosen, None
