"""Postgres side of the watch-history part of a flush, inside the flusher's one transaction.

Each captured heartbeat is the last one of its (user, item) since the previous capture. They go through
COPY into a temporary table, those stamped at or before their user's last clear are dropped (a clear
that happened after the capture), and one upsert writes the rest: a row stamped later wins, so a batch
resumed after a crash, or written after a Postgres-fallback heartbeat, never moves a position back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from daemon.history import from_us

_TEMP = "history_changes"
_COLUMNS = ("user_id", "content_id", "last_watched_at", "progress_pct", "position_seconds")
_CREATE = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {_TEMP} (
    user_id text NOT NULL, content_id text NOT NULL, last_watched_at timestamptz NOT NULL,
    progress_pct real NOT NULL, position_seconds integer NOT NULL
) ON COMMIT DELETE ROWS
"""
# SHARE: a clear in flight (ROW EXCLUSIVE, its first statement) commits before this reads the clears,
# and a clear that starts later waits for this commit, then deletes what this wrote.
_LOCK_CLEARS = "LOCK TABLE watch_history_clears IN SHARE MODE"
_SKIP_CLEARED = f"""
DELETE FROM {_TEMP} h USING watch_history_clears c
WHERE c.user_id = h.user_id AND h.last_watched_at <= c.cleared_at
"""
_UPSERT = f"""
INSERT INTO watch_history AS w ({", ".join(_COLUMNS)})
SELECT {", ".join(_COLUMNS)} FROM {_TEMP}
ON CONFLICT (user_id, content_id) DO UPDATE SET
    last_watched_at = EXCLUDED.last_watched_at,
    progress_pct = EXCLUDED.progress_pct,
    position_seconds = EXCLUDED.position_seconds
WHERE EXCLUDED.last_watched_at >= w.last_watched_at
"""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    ts_us: int
    progress_pct: float
    position_seconds: int
    value: str  # as stored in Redis, compared by trim_history


def parse_heartbeats(flat: Sequence[str]) -> dict[tuple[str, str], Heartbeat]:
    """{(user_id, content_id): Heartbeat} from a captured hbatch ("<content_id>|<user_id>" fields)."""
    out = {}
    for i in range(0, len(flat), 2):
        content_id, _, user_id = flat[i].partition("|")
        ts, progress, position = flat[i + 1].split("|")
        out[(user_id, content_id)] = Heartbeat(int(ts), float(progress), int(position), flat[i + 1])
    return out


async def write_history(conn: asyncpg.Connection, batches: Iterable[dict[tuple[str, str], Heartbeat]]) -> int:
    """Upsert the heartbeats (in the caller's transaction); returns the watch_history rows written."""
    newest: dict[tuple[str, str], Heartbeat] = {}
    for heartbeats in batches:  # a user lives in one shard, so pairs do not repeat; keep the newest anyway
        for pair, beat in heartbeats.items():
            current = newest.get(pair)
            if current is None or beat.ts_us > current.ts_us:
                newest[pair] = beat
    if not newest:
        return 0
    await conn.execute(_LOCK_CLEARS)
    await conn.execute(_CREATE)
    await conn.copy_records_to_table(
        _TEMP,
        records=[
            (user, content, from_us(b.ts_us), b.progress_pct, b.position_seconds)
            for (user, content), b in newest.items()
        ],
        columns=_COLUMNS,
    )
    await conn.execute(_SKIP_CLEARED)
    status = await conn.execute(_UPSERT)
    return int(status.split()[-1])


def trim_calls(
    batches: Iterable[tuple[int, dict[tuple[str, str], Heartbeat]]],
) -> list[tuple[int, str, list[str]]]:
    """The ``trim_history`` calls after a commit: one per (shard, user), with the (content_id, value)
    pairs written."""
    by_user: dict[tuple[int, str], list[str]] = {}
    for shard, heartbeats in batches:
        for (user, content), beat in heartbeats.items():
            by_user.setdefault((shard, user), []).extend((content, beat.value))
    return [(shard, user, pairs) for (shard, user), pairs in by_user.items()]
