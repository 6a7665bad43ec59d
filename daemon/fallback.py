"""Likes, dislikes and subscriptions written straight to Postgres while Redis is unreachable.

``set_reaction`` / ``set_subscription`` call these when their script call raised a Redis or socket
error. One transaction per request:

1. ``LOCK TABLE fallback_log IN ROW EXCLUSIVE MODE`` first: the flusher's writer and reconcile take
   SHARE on that table before they look at it, so a fallback either commits before they look (and its
   log row is seen) or starts after they commit (and reads what they wrote).
2. ``pg_advisory_xact_lock`` on the (user, target) pair: one user's concurrent requests on one target
   are serialised even when the record row does not exist yet.
3. The Idempotency-Key record (``fallback_idempotency``), same semantics as the Redis one.
4. The current record, the target state derived exactly as ``lua/set_reaction.lua`` /
   ``lua/set_subscription.lua`` do, the record change, the counter change, a ``fallback_log`` row.

The answer's counts are the Postgres counters: they lag whatever Redis still held unflushed when it
became unreachable. Every request answered here appends a ``fallback_log`` row (changed or not): the
pair's state is then what Postgres says, and anything Redis still holds pending for the pair from before
the outage is dropped by ``engagementd reconcile`` instead of being flushed over it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
import orjson

from daemon.core import Core
from daemon.errors import PG_ERRORS, KeyReused
from daemon.ids import STATE_NAMES, SUBSCRIPTION_STATES

log = logging.getLogger(__name__)

_LOCK_TAGS = {"like": "like", "subscription": "sub"}  # the advisory lock's namespace per kind
_KEY_SCOPES = {"like": "item", "subscription": "creator"}  # what an Idempotency-Key is scoped to

_LOCK_LOG = "LOCK TABLE fallback_log IN ROW EXCLUSIVE MODE"
_LOCK_PAIR = "SELECT pg_advisory_xact_lock(hashtext($1 || '|' || $2 || '|' || $3))"
_FIND_KEY = """
SELECT fingerprint, answer FROM fallback_idempotency
WHERE user_id = $1 AND target_id = $2 AND key = $3 AND created_at > now() - make_interval(secs => $4)
"""
_SAVE_KEY = """
INSERT INTO fallback_idempotency AS i (user_id, target_id, key, fingerprint, answer)
VALUES ($1, $2, $3, $4, $5::jsonb)
ON CONFLICT (user_id, target_id, key) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint, answer = EXCLUDED.answer, created_at = now()
"""
_DELETE_LIKE = "DELETE FROM likes WHERE user_id = $1 AND content_id = $2"
_LOG = "INSERT INTO fallback_log (kind, user_id, target_id, value) VALUES ($1, $2, $3, $4)"
_CONTENT_COUNTS = """
INSERT INTO content_counters AS c (content_id, likes, dislikes, updated_at) VALUES ($1, $2, $3, now())
ON CONFLICT (content_id) DO UPDATE
SET likes = c.likes + EXCLUDED.likes, dislikes = c.dislikes + EXCLUDED.dislikes, updated_at = now()
RETURNING likes, dislikes
"""
_CREATOR_COUNT = """
INSERT INTO creator_counters AS c (creator_id, subscribers, updated_at) VALUES ($1, $2, now())
ON CONFLICT (creator_id) DO UPDATE SET subscribers = c.subscribers + EXCLUDED.subscribers, updated_at = now()
RETURNING subscribers
"""


def reaction_target(current: int, action: str) -> int:
    """The new like state, as lua/set_reaction.lua derives it."""
    if action == "like":
        return 1
    if action == "dislike":
        return -1
    if (action == "unlike" and current == 1) or (action == "undislike" and current == -1):
        return 0
    return current


async def _replayed(conn: asyncpg.Connection, core: Core, user: str, target: str, key: str):  # type: ignore[no-untyped-def]
    if not key:
        return None
    return await conn.fetchrow(_FIND_KEY, user, target, key, float(core.settings.idempotency_ttl_s))


async def _write(
    core: Core,
    pair: tuple[str, str, str],
    key: str,
    fingerprint: str,
    change: Callable[[asyncpg.Connection], Awaitable[tuple[int, bool, dict]]],
) -> dict:
    """The transaction of the module docstring around ``change``. ``pair`` is (kind, user, target):
    kind ``like`` or ``subscription`` names the fallback_log rows and the metric. ``change(conn)``
    writes the record and the counter and returns (new state, whether it changed, answer body)."""
    kind, user_id, target_id = pair
    try:
        pool = await core.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_LOG)
            await conn.execute(_LOCK_PAIR, _LOCK_TAGS[kind], user_id, target_id)
            stored = await _replayed(conn, core, user_id, target_id, key)
            if stored is not None:
                if stored["fingerprint"] != fingerprint:
                    raise KeyReused(_KEY_SCOPES[kind])
                result = {"status": "replayed", "body": orjson.loads(stored["answer"])}
            else:
                target, changed, body = await change(conn)
                await conn.execute(_LOG, kind, user_id, target_id, target)
                if key:
                    answer = orjson.dumps(body).decode()
                    await conn.execute(_SAVE_KEY, user_id, target_id, key, fingerprint, answer)
                result = {"status": "changed" if changed else "unchanged", "body": body}
    except PG_ERRORS as exc:
        log.warning("%s refused: Redis and Postgres both unavailable (%s)", kind, exc)
        raise core.unavailable("Likes and subscriptions are temporarily unavailable.") from None
    core.metrics.fallback_writes.labels(kind=kind).inc()
    return result


async def set_reaction(core: Core, content_id: str, user_id: str, action: str, key: str) -> dict:
    """``daemon.reactions.set_reaction``'s answer, written to Postgres (see the module docstring)."""

    async def change(conn: asyncpg.Connection) -> tuple[int, bool, dict]:
        current = await conn.fetchval(
            "SELECT value FROM likes WHERE user_id = $1 AND content_id = $2", user_id, content_id
        )
        current = int(current or 0)
        target = reaction_target(current, action)
        if target == current:
            pass
        elif target == 0:
            await conn.execute(_DELETE_LIKE, user_id, content_id)
        else:
            await conn.execute(
                "INSERT INTO likes AS l (user_id, content_id, value) VALUES ($1, $2, $3)"
                " ON CONFLICT (user_id, content_id) DO UPDATE SET value = EXCLUDED.value,"
                " updated_at = now()",
                user_id,
                content_id,
                target,
            )
        likes_diff = (target == 1) - (current == 1)
        dislikes_diff = (target == -1) - (current == -1)
        likes, dislikes = await conn.fetchrow(_CONTENT_COUNTS, content_id, likes_diff, dislikes_diff)
        body = {"state": STATE_NAMES[target], "likes": int(likes), "dislikes": int(dislikes)}
        return target, target != current, body

    return await _write(core, ("like", user_id, content_id), key, f"like:{action}", change)


async def set_subscription(core: Core, creator: str, user_id: str, action: str, key: str) -> dict:
    """``daemon.reactions.set_subscription``'s answer, written to Postgres (see the module docstring)."""

    async def change(conn: asyncpg.Connection) -> tuple[int, bool, dict]:
        current = await conn.fetchval(
            "SELECT count(*) FROM creator_subscriptions WHERE user_id = $1 AND creator_id = $2",
            user_id,
            creator,
        )
        current = int(current)
        target = 1 if action == "subscribe" else 0
        if target > current:
            await conn.execute(
                "INSERT INTO creator_subscriptions (user_id, creator_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                user_id,
                creator,
            )
        elif target < current:
            await conn.execute(
                "DELETE FROM creator_subscriptions WHERE user_id = $1 AND creator_id = $2", user_id, creator
            )
        subscribers = await conn.fetchval(_CREATOR_COUNT, creator, target - current)
        body = {"creator_id": creator, "state": SUBSCRIPTION_STATES[target], "subscribers": int(subscribers)}
        return target, target != current, body

    return await _write(core, ("subscription", user_id, creator), key, f"subscription:{action}", change)
