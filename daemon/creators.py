"""A creator's totals over the items the content registry assigns to them (docs/api.md): one Postgres
query, so exact once flushed (the counts lag the live ones by at most a flush interval). An item
registered after it was viewed counts with all its counts, from before its registration too: the
totals are the sums over the registry as it is now."""

from __future__ import annotations

from typing import Any

from daemon.core import Core
from daemon.errors import PG_ERRORS

TOTALS = ("views", "likes", "dislikes", "comments", "shares", "watch_seconds")

_TOTALS = f"""
SELECT i.creator_id,
       (SELECT subscribers FROM creator_counters WHERE creator_id = i.creator_id) AS subscribers,
       count(r.content_id) AS content_count,
       {", ".join(f"coalesce(sum(c.{name}), 0) AS {name}" for name in TOTALS)}
FROM (SELECT DISTINCT unnest($1::text[])) AS i (creator_id)
LEFT JOIN content_registry r ON r.creator_id = i.creator_id
LEFT JOIN content_counters c ON c.content_id = r.content_id
GROUP BY i.creator_id
"""


async def creator_stats(core: Core, creator_id: str) -> dict[str, Any]:
    """``{"creator_id", "subscribers", "content_count", *TOTALS}``; ``Unavailable`` without Postgres."""
    return (await creators_stats(core, [creator_id]))[creator_id]


async def creators_stats(core: Core, creator_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The totals of each creator, in one query."""
    try:
        pool = await core.pool()
        rows = await pool.fetch(_TOTALS, creator_ids)
    except PG_ERRORS as exc:
        raise core.unavailable("Creator stats are temporarily unavailable.") from exc
    found = {}
    for row in rows:
        body: dict[str, Any] = {"creator_id": row["creator_id"], "subscribers": int(row["subscribers"] or 0)}
        body["content_count"] = int(row["content_count"])
        body.update({name: int(row[name]) for name in TOTALS})
        found[row["creator_id"]] = body
    return found
