"""Idempotency-Key records in Postgres, for endpoints that write only to Postgres (the playlist POSTs).

The record is claimed in the request's own transaction, before its work: the same key from the same user
within ``idempotency_ttl_s`` gets the first answer back, a different request with that key is refused.
A concurrent request with the same key waits on the claimed row until the first commits (then replays
its answer) or rolls back (then claims it). An answer is kept only when the request succeeded: a refused
request rolls back its claim, so its retry runs again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

_CLAIM = """
INSERT INTO playlist_idempotency AS r (user_id, key, fingerprint, status) VALUES ($1, $2, $3, 0)
ON CONFLICT (user_id, key) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, status = 0, answer = NULL, created_at = now()
    WHERE r.created_at < now() - make_interval(secs => $4)
RETURNING 1
"""
_READ = "SELECT fingerprint, status, answer FROM playlist_idempotency WHERE user_id = $1 AND key = $2"
_REMEMBER = "UPDATE playlist_idempotency SET status = $3, answer = $4::jsonb WHERE user_id = $1 AND key = $2"
_PRUNE = "DELETE FROM playlist_idempotency WHERE created_at < now() - make_interval(secs => $1)"


@dataclass(frozen=True, slots=True)
class Replay:
    same_request: bool  # False: the key was used for a different request
    status: int
    answer: Any


async def claim(
    conn: asyncpg.Connection, user_id: str, key: str, fingerprint: str, ttl_s: int
) -> Replay | None:
    """None when this request owns the key (do the work, then ``remember``); else the earlier answer.
    Must run inside the request's transaction."""
    if await conn.fetchval(_CLAIM, user_id, key, fingerprint, float(ttl_s)) is not None:
        return None
    row = await conn.fetchrow(_READ, user_id, key)
    return Replay(row["fingerprint"] == fingerprint, row["status"], orjson.loads(row["answer"] or "null"))


async def remember(conn: asyncpg.Connection, user_id: str, key: str, status: int, answer: Any) -> None:
    await conn.execute(_REMEMBER, user_id, key, status, orjson.dumps(answer).decode())


async def prune_playlist_idempotency(conn: asyncpg.Connection, ttl_s: int) -> int:
    status = await conn.execute(_PRUNE, float(ttl_s))
    return int(status.split()[-1])
