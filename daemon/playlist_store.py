"""Playlists in Postgres: the statements behind api/playlists.py, each run in the caller's transaction.

Items are an ordered list: ``position`` is dense from 0 within a playlist (a deferred unique constraint
checks it at commit, so one UPDATE may shift a range). Every change to a playlist's items first locks
the playlist's row (FOR UPDATE, with the owner in the WHERE clause: another user's playlist is not
found), so concurrent adds, moves and removals on one playlist run one after another and the order
stays dense. Creating a playlist takes a per-user advisory lock, so the per-user limit holds under
concurrent creates.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from daemon.errors import Conflict, Invalid, NotFound
from daemon.timefmt import utc_timestamp

_USER_LOCK_SPACE = 0x706C  # first key of pg_advisory_xact_lock(int, int): "pl"

_PLAYLIST_COLUMNS = "p.playlist_id, p.name, p.description, p.created_at, p.updated_at"
_COUNT = "(SELECT count(*) FROM playlist_items i WHERE i.playlist_id = p.playlist_id) AS item_count"
_LOCK_USER = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
_COUNT_PLAYLISTS = "SELECT count(*) FROM playlists WHERE user_id = $1"
_INSERT_PLAYLIST = f"""
INSERT INTO playlists AS p (user_id, name, description) VALUES ($1, $2, $3)
RETURNING {_PLAYLIST_COLUMNS}, 0::bigint AS item_count
"""
_SELECT_PLAYLIST = (
    f"SELECT {_PLAYLIST_COLUMNS}, {_COUNT} FROM playlists p WHERE p.playlist_id = $1 AND p.user_id = $2"
)
_LOCK_PLAYLIST = "SELECT playlist_id FROM playlists WHERE playlist_id = $1 AND user_id = $2 FOR UPDATE"
_LIST_PLAYLISTS = f"""
SELECT {_PLAYLIST_COLUMNS}, {_COUNT} FROM playlists p
WHERE p.user_id = $1 AND ($2::bigint IS NULL OR p.playlist_id < $2)
ORDER BY p.playlist_id DESC LIMIT $3
"""
_UPDATE_PLAYLIST = f"""
UPDATE playlists p
SET name = coalesce($3, p.name), description = coalesce($4, p.description), updated_at = now()
WHERE p.playlist_id = $1 AND p.user_id = $2
RETURNING {_PLAYLIST_COLUMNS}, {_COUNT}
"""
_TOUCH = "UPDATE playlists SET updated_at = now() WHERE playlist_id = $1"
_DELETE_PLAYLIST = "DELETE FROM playlists WHERE playlist_id = $1 AND user_id = $2"
_ITEM_COUNT = "SELECT count(*) FROM playlist_items WHERE playlist_id = $1"
_ITEM_POSITION = "SELECT position FROM playlist_items WHERE playlist_id = $1 AND content_id = $2"
_ITEMS = """
SELECT content_id, position, added_at FROM playlist_items
WHERE playlist_id = $1 AND position > $2 ORDER BY position LIMIT $3
"""
_OPEN_GAP = "UPDATE playlist_items SET position = position + 1 WHERE playlist_id = $1 AND position >= $2"
_INSERT_ITEM = """
INSERT INTO playlist_items (playlist_id, content_id, position) VALUES ($1, $2, $3)
RETURNING content_id, position, added_at
"""
_DELETE_ITEM = "DELETE FROM playlist_items WHERE playlist_id = $1 AND content_id = $2 RETURNING position"
_CLOSE_GAP = "UPDATE playlist_items SET position = position - 1 WHERE playlist_id = $1 AND position > $2"
_SHIFT_UP = """
UPDATE playlist_items SET position = position - 1 WHERE playlist_id = $1 AND position > $2 AND position <= $3
"""
_SHIFT_DOWN = """
UPDATE playlist_items SET position = position + 1 WHERE playlist_id = $1 AND position >= $2 AND position < $3
"""
_PLACE = """
UPDATE playlist_items SET position = $3 WHERE playlist_id = $1 AND content_id = $2
RETURNING content_id, position, added_at
"""


def not_found() -> NotFound:
    return NotFound("playlist_not_found", "No such playlist of yours.")


def playlist_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "playlist_id": row["playlist_id"],
        "name": row["name"],
        "description": row["description"],
        "item_count": row["item_count"],
        "created_at": utc_timestamp(row["created_at"]),
        "updated_at": utc_timestamp(row["updated_at"]),
    }


def item_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "content_id": row["content_id"],
        "position": row["position"],
        "added_at": utc_timestamp(row["added_at"]),
    }


async def create(
    conn: asyncpg.Connection, user_id: str, name: str, description: str, max_playlists: int
) -> dict[str, Any]:
    await conn.execute(_LOCK_USER, _USER_LOCK_SPACE, user_id)
    if await conn.fetchval(_COUNT_PLAYLISTS, user_id) >= max_playlists:
        raise Conflict("too_many_playlists", f"A user may have at most {max_playlists} playlists.")
    return playlist_json(await conn.fetchrow(_INSERT_PLAYLIST, user_id, name, description))


async def list_page(
    conn: asyncpg.Connection, user_id: str, before_id: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; returns the page and the last playlist id when more follow."""
    rows = await conn.fetch(_LIST_PLAYLISTS, user_id, before_id, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return [playlist_json(r) for r in rows], (rows[-1]["playlist_id"] if more else None)


async def get(
    conn: asyncpg.Connection, user_id: str, playlist_id: int, after_position: int, limit: int
) -> dict[str, Any]:
    """The playlist with one page of its items (in order, after ``after_position``) and ``next_cursor``
    set by the caller from ``last_position`` (None when no more items follow)."""
    row = await conn.fetchrow(_SELECT_PLAYLIST, playlist_id, user_id)
    if row is None:
        raise not_found()
    items = await conn.fetch(_ITEMS, playlist_id, after_position, limit + 1)
    more = len(items) > limit
    items = items[:limit]
    return {
        **playlist_json(row),
        "items": [item_json(i) for i in items],
        "last_position": items[-1]["position"] if more else None,
    }


async def update(
    conn: asyncpg.Connection, user_id: str, playlist_id: int, name: str | None, description: str | None
) -> dict[str, Any]:
    row = await conn.fetchrow(_UPDATE_PLAYLIST, playlist_id, user_id, name, description)
    if row is None:
        raise not_found()
    return playlist_json(row)


async def delete(conn: asyncpg.Connection, user_id: str, playlist_id: int) -> None:
    if await conn.execute(_DELETE_PLAYLIST, playlist_id, user_id) == "DELETE 0":
        raise not_found()


async def _lock(conn: asyncpg.Connection, user_id: str, playlist_id: int) -> int:
    """Lock the playlist's row (404 if it is not the user's); returns its item count."""
    if await conn.fetchval(_LOCK_PLAYLIST, playlist_id, user_id) is None:
        raise not_found()
    return int(await conn.fetchval(_ITEM_COUNT, playlist_id))


async def add_item(
    conn: asyncpg.Connection,
    user_id: str,
    playlist_id: int,
    content_id: str,
    position: int | None,
    max_items: int,
) -> dict[str, Any]:
    count = await _lock(conn, user_id, playlist_id)
    existing = await conn.fetchval(_ITEM_POSITION, playlist_id, content_id)
    if existing is not None:
        raise Conflict("item_exists", "This item is already in the playlist.", position=existing)
    if count >= max_items:
        raise Conflict("too_many_items", f"A playlist may hold at most {max_items} items.")
    if position is None:
        position = count
    elif position > count:
        raise Invalid("invalid_position", f"position must be from 0 to {count} (the item count).")
    if position < count:
        await conn.execute(_OPEN_GAP, playlist_id, position)
    item = await conn.fetchrow(_INSERT_ITEM, playlist_id, content_id, position)
    await conn.execute(_TOUCH, playlist_id)
    return {"playlist_id": playlist_id, **item_json(item), "item_count": count + 1}


async def remove_item(conn: asyncpg.Connection, user_id: str, playlist_id: int, content_id: str) -> None:
    await _lock(conn, user_id, playlist_id)
    position = await conn.fetchval(_DELETE_ITEM, playlist_id, content_id)
    if position is None:
        raise NotFound("item_not_found", "This item is not in the playlist.")
    await conn.execute(_CLOSE_GAP, playlist_id, position)
    await conn.execute(_TOUCH, playlist_id)


async def move_item(
    conn: asyncpg.Connection, user_id: str, playlist_id: int, content_id: str, position: int
) -> dict[str, Any]:
    count = await _lock(conn, user_id, playlist_id)
    current = await conn.fetchval(_ITEM_POSITION, playlist_id, content_id)
    if current is None:
        raise NotFound("item_not_found", "This item is not in the playlist.")
    if position >= count:
        raise Invalid("invalid_position", f"position must be from 0 to {count - 1}.")
    if position > current:
        await conn.execute(_SHIFT_UP, playlist_id, current, position)
    elif position < current:
        await conn.execute(_SHIFT_DOWN, playlist_id, position, current)
    item = await conn.fetchrow(_PLACE, playlist_id, content_id, position)
    if position != current:
        await conn.execute(_TOUCH, playlist_id)
    return {"playlist_id": playlist_id, **item_json(item), "item_count": count}
