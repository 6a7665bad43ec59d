"""GDPR purge (seed 001): remove every engagement record of one user, in Postgres and Redis.

``purge_user`` runs ``STEPS`` in order, one per domain. Every step is idempotent by construction, so a
purge interrupted at any point (a crash, Redis or Postgres failing midway) and run again ends exact, and
a purge run twice removes nothing the second time. A step that fails does not stop the others (the
records they hold are removed anyway); ``purge_user`` then raises ``PurgeIncomplete`` and the caller
runs it again. ``DELETE /internal/v1/users/{userId}`` (api/purge.py) and the ``user.deleted`` consumer
call it.

Counts move as if the user had taken each action back: likes, dislikes and subscriptions go through
``clear_reactions.lua`` / ``clear_subscriptions.lua`` (state, counts, delta and a pending state 0, one
atomic call per shard; states and counts Redis no longer holds are loaded from Postgres first), so the
flusher writes the counts and deletes the records exactly once, and states still pending in Redis (not
yet flushed) are covered. Once the rows are deleted in Postgres too, the user's state keys and pending
0s, which then only repeat what Postgres says, are dropped (``forget_pairs.lua``), so that no Redis key
names the user (but for a pair a flusher had captured: its 0 is written by the next flush). The Redis
call comes first and the Postgres delete second: an interruption between them leaves the Postgres rows
that find the items again.
Comments are anonymised (body and author removed, thread shape kept) and uncounted exactly once through
``daemon.comment_counts``. Views and shares are counts of events, not per-user state: their counts stay,
the ``shares`` rows (who shared what) go.

To add a step, append ``("name", coroutine)`` to ``STEPS``; the
coroutine takes a ``PurgeContext`` and returns ``{"<what>": removed, ...}``, and must be idempotent.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from daemon import comment_counts, history, keys
from daemon.errors import ColdLoadError, PurgeIncomplete
from daemon.settings import Settings
from daemon.store import Store
from lua import Scripts

log = logging.getLogger(__name__)

_ERRORS = (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, ColdLoadError)
_CHUNK = 500
_GLOB = str.maketrans({c: "\\" + c for c in "\\*?[]"})


@dataclass(frozen=True, slots=True)
class PurgeContext:
    store: Store
    pool: asyncpg.Pool
    user_id: str

    @property
    def redis(self) -> Any:
        return self.store.redis

    @property
    def scripts(self) -> Scripts:
        return self.store.scripts

    @property
    def settings(self) -> Settings:
        return self.store.settings


Step = Callable[[PurgeContext], Awaitable[dict[str, int]]]


async def purge_user(store: Store, pool: asyncpg.Pool, user_id: str) -> dict:
    """Remove every engagement record of ``user_id``; returns ``{"user_id", "removed": {what: n}}``.
    Raises ``PurgeIncomplete`` when a step failed (after running the others)."""
    ctx = PurgeContext(store, pool, user_id)
    removed: dict[str, int] = {}
    failed: list[str] = []
    errors: list[BaseException] = []
    for name, step in STEPS:
        try:
            for what, n in (await step(ctx)).items():
                removed[what] = removed.get(what, 0) + n
        except _ERRORS as exc:
            log.warning("purge step %s failed (%s); the purge must be run again", name, exc)
            failed.append(name)
            errors.append(exc)
    summary = {"user_id": user_id, "removed": removed}
    if failed:
        raise PurgeIncomplete(summary, failed, errors)
    log.info("purged user: %s", removed)
    return summary


# -- Redis helpers ------------------------------------------------------------------------------------


async def pending_targets(ctx: PurgeContext, hash_keys: Callable[[int], Iterable[str]]) -> set[str]:
    """Targets (content or creator ids) of the user's fields ``"<target>|<user_id>"`` in the given
    per-shard hashes (pending states: small, they hold only what the flusher has not written yet)."""
    match = "*|" + ctx.user_id.translate(_GLOB)
    scans = {(key, 0) for shard in range(ctx.settings.shards) for key in hash_keys(shard)}
    found: set[str] = set()
    while scans:
        pipe = ctx.redis.pipeline(transaction=False)
        order = sorted(scans)
        for key, cursor in order:
            pipe.hscan(key, cursor, match=match, count=1000)
        scans = set()
        for (key, _), (cursor, fields) in zip(order, await pipe.execute(), strict=True):
            for name in fields:
                target, _, user = name.partition("|")
                if user == ctx.user_id:
                    found.add(target)
            if int(cursor):
                scans.add((key, int(cursor)))
    return found


# -- the steps ---------------------------------------------------------------------------------------


async def purge_likes(ctx: PurgeContext) -> dict[str, int]:
    items = {
        r[0] for r in await ctx.pool.fetch("SELECT content_id FROM likes WHERE user_id = $1", ctx.user_id)
    }
    items |= {
        r[0]
        for r in await ctx.pool.fetch(
            "SELECT target_id FROM fallback_log WHERE user_id = $1 AND kind = 'like' AND NOT reconciled",
            ctx.user_id,
        )
    }
    items |= await pending_targets(ctx, lambda s: (keys.sdelta_key(s), keys.sbatch_key(s)))
    likes, dislikes = await ctx.store.clear_reactions(ctx.user_id, sorted(items))
    await ctx.pool.execute("DELETE FROM likes WHERE user_id = $1", ctx.user_id)
    await ctx.store.forget_pairs(ctx.user_id, sorted(items), [])
    return {"likes": likes, "dislikes": dislikes}


async def purge_subscriptions(ctx: PurgeContext) -> dict[str, int]:
    creators = {
        r[0]
        for r in await ctx.pool.fetch(
            "SELECT creator_id FROM creator_subscriptions WHERE user_id = $1", ctx.user_id
        )
    }
    creators |= {
        r[0]
        for r in await ctx.pool.fetch(
            "SELECT target_id FROM fallback_log"
            " WHERE user_id = $1 AND kind = 'subscription' AND NOT reconciled",
            ctx.user_id,
        )
    }
    creators |= await pending_targets(ctx, lambda s: (keys.subdelta_key(s), keys.subbatch_key(s)))
    removed = await ctx.store.clear_subscriptions(ctx.user_id, sorted(creators))
    await ctx.pool.execute("DELETE FROM creator_subscriptions WHERE user_id = $1", ctx.user_id)
    await ctx.store.forget_pairs(ctx.user_id, [], sorted(creators))
    return {"subscriptions": removed}


_USER_COMMENTS = """
SELECT comment_id, parent_comment_id, soft_delete_flag FROM comments WHERE user_id = $1
ORDER BY comment_id LIMIT $2 FOR UPDATE
"""
_ANONYMISE = """
UPDATE comments SET body = NULL, user_id = NULL, soft_delete_flag = true WHERE comment_id = ANY($1::bigint[])
"""
_REPLIES = "UPDATE comments SET reply_count = reply_count - $2 WHERE comment_id = $1"


async def purge_comments(ctx: PurgeContext) -> dict[str, int]:
    """Comments keep their place in their threads (other users' replies stay attached) but lose body
    and author, and count as deleted; then every pending count change is applied (a rerun after an
    interruption applies what the first run could not)."""
    purged = 0
    while True:
        for attempt in range(3):
            try:
                async with ctx.pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(_USER_COMMENTS, ctx.user_id, _CHUNK)
                    if rows:
                        await conn.execute(_ANONYMISE, [r["comment_id"] for r in rows])
                        replies = Counter(
                            r["parent_comment_id"]
                            for r in rows
                            if r["parent_comment_id"] is not None and not r["soft_delete_flag"]
                        )
                        for parent in sorted(replies):
                            await conn.execute(_REPLIES, parent, replies[parent])
                break
            except asyncpg.DeadlockDetectedError:
                if attempt == 2:
                    raise
        purged += len(rows)
        if len(rows) < _CHUNK:
            break
    await comment_counts.settle_pending(ctx.store, ctx.pool)
    return {"comments": purged}


async def purge_rows(ctx: PurgeContext) -> dict[str, int]:
    """Shares, playlists (their items cascade), and the Idempotency-Key records and fallback log rows
    that name the user."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        counts = {
            what: int((await conn.execute(f"DELETE FROM {what} WHERE user_id = $1", ctx.user_id)).split()[-1])
            for what in ("shares", "playlists")
        }
        records = 0
        for table in ("comment_idempotency", "fallback_idempotency", "playlist_idempotency"):
            records += int(
                (await conn.execute(f"DELETE FROM {table} WHERE user_id = $1", ctx.user_id)).split()[-1]
            )
        # Settled rows are history: gone. Unsettled ones are still needed by reconcile, which then only
        # uses their target (the item or creator it recounts): the user is taken off them.
        await conn.execute("DELETE FROM fallback_log WHERE user_id = $1 AND reconciled", ctx.user_id)
        await conn.execute("UPDATE fallback_log SET user_id = '' WHERE user_id = $1", ctx.user_id)
    return {**counts, "idempotency_records": records}


async def purge_history(ctx: PurgeContext) -> dict[str, int]:
    """Watch history in Redis (the user's entries and heartbeats not yet flushed) and Postgres, as a
    clear does (daemon/history.py): a heartbeat captured before the purge is not written after it."""
    rows = await history.purge_history(ctx.store, ctx.pool, ctx.user_id)
    return {"watch_history": rows}


async def purge_rate_limits(ctx: PurgeContext) -> dict[str, int]:
    """The user's sliding-window logs (``eng:{u:<user>}:rl:<action>``): one slot, one DEL."""
    actions = {"like", "dislike", "subscribe", "share", "comment", "history", "playlist"}
    actions |= {part.split("=", 1)[0].strip() for part in ctx.settings.rate_limits.split(",") if "=" in part}
    await ctx.redis.delete(*(keys.rate_limit_key(ctx.user_id, a) for a in sorted(actions)))
    return {}


STEPS: list[tuple[str, Step]] = [
    ("likes", purge_likes),
    ("subscriptions", purge_subscriptions),
    ("comments", purge_comments),
    ("history", purge_history),
    ("rows", purge_rows),
    ("rate_limits", purge_rate_limits),
]
