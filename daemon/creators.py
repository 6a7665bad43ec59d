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
SELECT (SELECT subscribers FROM creator_counters WHERE creator_id = $1) AS subscribers,
       count(r.content_id) AS content_count,
       {", ".join(f"coalesce(sum(c.{name}), 0) AS {name}" for name in TOTALS)}
FROM content_registry r
LEFT JOIN content_counters c ON c.content_id = r.content_id
WHERE r.creator_id = $1
"""


async def creator_stats(core: Core, creator_id: str) -> dict[str, Any]:
    """``{"creator_id", "subscribers", "content_count", *TOTALS}``; ``Unavailable`` without Postgres."""
    try:
        pool = await core.pool()
        row = await pool.fetchrow(_TOTALS, creator_id)
    except PG_ERRORS as exc:
        raise core.unavailable("Creator stats are temporarily unavailable.") from exc
    body: dict[str, Any] = {"creator_id": creator_id, "subscribers": int(row["subscribers"] or 0)}
    body["content_count"] = int(row["content_count"])
    body.update({name: int(row[name]) for name in TOTALS})
    return body
