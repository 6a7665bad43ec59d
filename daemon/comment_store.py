"""Comments in Postgres: posting (with its Idempotency-Key record), listing by keyset, soft deleting.

Every write is one transaction on the comment rows (the parent's ``reply_count`` moves in the same
transaction), then ``daemon.comment_counts.settle`` applies the row's count change to Redis. Redis being
unreachable never refuses a comment: the change stays pending on the row and reconcile applies it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from daemon.errors import Conflict, Forbidden, Invalid, KeyReused, NotFound
from daemon.timefmt import utc_timestamp

COLUMNS = (
    "comment_id, content_id, user_id, parent_comment_id, body, created_at, reply_count, soft_delete_flag"
)

_FIND_KEY = """
SELECT fingerprint, comment_id FROM comment_idempotency
WHERE user_id = $1 AND content_id = $2 AND key = $3 AND created_at > now() - make_interval(secs => $4)
"""
# An expired record (not yet pruned) is replaced; a live one makes this insert return nothing. A
# concurrent request with the same key waits here until the first one commits or rolls back.
_SAVE_KEY = """
INSERT INTO comment_idempotency AS i (user_id, content_id, key, fingerprint, comment_id)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (user_id, content_id, key) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint, comment_id = EXCLUDED.comment_id, created_at = now()
WHERE i.created_at <= now() - make_interval(secs => $6)
RETURNING 1
"""
_PARENT = (
    "SELECT content_id, parent_comment_id, soft_delete_flag FROM comments WHERE comment_id = $1 FOR SHARE"
)
_REPLIES = "UPDATE comments SET reply_count = reply_count + $2 WHERE comment_id = $1"
_INSERT = f"""
INSERT INTO comments (content_id, user_id, parent_comment_id, body, created_at)
VALUES ($1, $2, $3, $4, clock_timestamp())
RETURNING {COLUMNS}
"""
_ONE = f"SELECT {COLUMNS} FROM comments WHERE comment_id = $1"
_FOR_DELETE = """
SELECT content_id, user_id, parent_comment_id, soft_delete_flag FROM comments WHERE comment_id = $1 FOR UPDATE
"""
_CREATOR = "SELECT creator_id FROM content_registry WHERE content_id = $1"
_SOFT_DELETE = "UPDATE comments SET soft_delete_flag = true WHERE comment_id = $1"

_TOP = f"SELECT {COLUMNS} FROM comments WHERE content_id = $1 AND parent_comment_id IS NULL"
_NEWEST_FIRST = " ORDER BY created_at DESC, comment_id DESC LIMIT $2"
_THREAD = f"SELECT {COLUMNS} FROM comments WHERE content_id = $1 AND parent_comment_id = $3"
_OLDEST_FIRST = " ORDER BY created_at, comment_id LIMIT $2"
_LIST = {
    (False, False): _TOP + _NEWEST_FIRST,
    (False, True): _TOP + " AND (created_at, comment_id) < ($3, $4)" + _NEWEST_FIRST,
    (True, False): _THREAD + _OLDEST_FIRST,
    (True, True): _THREAD + " AND (created_at, comment_id) > ($4, $5)" + _OLDEST_FIRST,
}


class _KeyTaken(Exception):
    """Another request with the same Idempotency-Key committed first."""


def fingerprint(parent_id: int | None, body: str) -> str:
    return hashlib.sha256(f"{parent_id or ''}\n{body}".encode()).hexdigest()


def public(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The API shape of a comment row: a deleted comment keeps its place (id, thread, replies) but
    serves neither its body nor its author."""
    deleted = bool(row["soft_delete_flag"])
    return {
        "comment_id": row["comment_id"],
        "content_id": row["content_id"],
        "user_id": None if deleted else row["user_id"],
        "parent_comment_id": row["parent_comment_id"],
        "body": None if deleted else row["body"],
        "created_at": utc_timestamp(row["created_at"]),
        "reply_count": row["reply_count"],
        "deleted": deleted,
    }


@dataclass(slots=True)
class Posted:
    status: str  # "created" | "replayed"
    comment: dict[str, Any]


async def post(
    conn: asyncpg.Connection,
    content_id: str,
    user_id: str,
    body: str,
    parent_id: int | None,
    key: str,
    key_ttl_s: int,
) -> Posted:
    """Insert a comment (or a reply, attached to its thread's top-level comment), once per key."""
    fp = fingerprint(parent_id, body) if key else ""
    for _attempt in range(3):
        if key:
            stored = await conn.fetchrow(_FIND_KEY, user_id, content_id, key, float(key_ttl_s))
            if stored is not None:
                return await _replay(conn, stored, fp)
        try:
            async with conn.transaction():
                thread = None
                if parent_id is not None:
                    thread = await _thread_of(conn, content_id, parent_id)
                    await conn.execute(_REPLIES, thread, 1)
                row = await conn.fetchrow(_INSERT, content_id, user_id, thread, body)
                if key:
                    saved = await conn.fetchval(
                        _SAVE_KEY, user_id, content_id, key, fp, row["comment_id"], float(key_ttl_s)
                    )
                    if saved is None:  # another request with this key committed first
                        raise _KeyTaken
        except _KeyTaken:
            continue  # rolled back: the first request's record answers
        return Posted("created", public(row))
    raise Conflict("idempotency_key_busy", "This Idempotency-Key is being used by another request; retry.")


async def _thread_of(conn: asyncpg.Connection, content_id: str, parent_id: int) -> int:
    """The top-level comment a reply to ``parent_id`` attaches to (the parent itself, or its thread's)."""
    parent = await conn.fetchrow(_PARENT, parent_id)
    if parent is None:
        raise NotFound("parent_comment_not_found", "parent_comment_id names no comment.")
    if parent["content_id"] != content_id:
        raise Invalid("parent_comment_other_content", "parent_comment_id is a comment on another item.")
    if parent["soft_delete_flag"]:
        raise Conflict("parent_comment_deleted", "The comment replied to has been deleted.")
    return parent["parent_comment_id"] or parent_id


async def _replay(conn: asyncpg.Connection, stored: asyncpg.Record, fp: str) -> Posted:
    if stored["fingerprint"] != fp:
        raise KeyReused("item")
    row = dict(await conn.fetchrow(_ONE, stored["comment_id"]))
    row.update(reply_count=0, soft_delete_flag=False)  # the first answer, as it was
    return Posted("replayed", public(row))


async def delete(conn: asyncpg.Connection, content_id: str, comment_id: int, user_id: str) -> bool:
    """Soft delete by the author or the item's creator. True when this call deleted it, False when it
    was already deleted (deleting twice changes nothing)."""
    async with conn.transaction():
        row = await conn.fetchrow(_FOR_DELETE, comment_id)
        if row is None or row["content_id"] != content_id:
            raise NotFound("comment_not_found", "No such comment on this item.")
        if row["user_id"] != user_id and await conn.fetchval(_CREATOR, content_id) != user_id:
            raise Forbidden(
                "delete_not_allowed", "Only the comment's author or the item's creator may delete it."
            )
        if row["soft_delete_flag"]:
            return False
        await conn.execute(_SOFT_DELETE, comment_id)
        if row["parent_comment_id"] is not None:
            await conn.execute(_REPLIES, row["parent_comment_id"], -1)
    return True


async def thread_exists(conn: asyncpg.Connection, content_id: str, parent_id: int) -> bool:
    return (
        await conn.fetchval("SELECT content_id FROM comments WHERE comment_id = $1", parent_id) == content_id
    )


async def page(
    conn: asyncpg.Connection,
    content_id: str,
    parent_id: int | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Up to ``limit`` comments after the keyset position ``after``: top-level ones newest first, or a
    thread's replies oldest first."""
    args: list[object] = [content_id, limit]
    if parent_id is not None:
        args.append(parent_id)
    if after is not None:
        args.extend(after)
    return await conn.fetch(_LIST[(parent_id is not None, after is not None)], *args)
