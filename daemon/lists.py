"""The read side's lists, newest first, from Postgres: a user's likes and subscriptions, a creator's
subscribers (docs/api.md). They hold what the flusher has written (a like or subscription reaches
Postgres within a flush interval); a keyset position (created_at, id) pages through each record once
even while new ones arrive, since new ones are newer than any page already read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from daemon.timefmt import utc_timestamp


@dataclass(frozen=True, slots=True)
class Listing:
    name: str  # what the list is (a cursor of another list is refused)
    table: str
    owner: str  # the column the list is of (the user, the creator)
    item: str  # the column listed, named so in the answer
    at_field: str  # the name of created_at in the answer
    where: str = ""  # more conditions


LIKES = Listing("likes", "likes", "user_id", "content_id", "liked_at", "AND value = 1")
SUBSCRIPTIONS = Listing("subscriptions", "creator_subscriptions", "user_id", "creator_id", "subscribed_at")
SUBSCRIBERS = Listing("subscribers", "creator_subscriptions", "creator_id", "user_id", "subscribed_at")

Position = tuple[datetime, str]  # the last (created_at, id) of the page before


async def page(
    pool: asyncpg.Pool, listing: Listing, owner: str, after: Position | None, limit: int
) -> tuple[list[dict[str, str]], Position | None]:
    """Up to ``limit`` entries of ``owner``'s list after ``after``; and the position of the next page
    (None on the last one)."""
    it = listing
    query = f"SELECT {it.item} AS id, created_at FROM {it.table} WHERE {it.owner} = $1 {it.where}"
    args: list[object] = [owner, limit + 1]
    if after is not None:
        query += f" AND (created_at, {it.item}) < ($3, $4)"
        args += after
    query += f" ORDER BY created_at DESC, {it.item} DESC LIMIT $2"
    rows = await pool.fetch(query, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{it.item: r["id"], it.at_field: utc_timestamp(r["created_at"])} for r in rows]
    return items, (rows[-1]["created_at"], rows[-1]["id"]) if more else None
