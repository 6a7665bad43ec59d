"""Comment counts: each comment row's +1, and once it is deleted its -1, applied to Redis exactly once.

The comment row in Postgres is the record (it is written there even while Redis is unreachable: seed
000's failure table). Its count lives in Redis like every other counter (``comments:<content_id>`` in the
shard's live and delta hashes), from where the flusher adds it to ``content_counters.comments``. The
row's ``counted`` flag says whether its +1 is in Redis; a live comment should be counted, a deleted one
not, so a row whose flag disagrees (``counted = soft_delete_flag``, a partial index) has a change to
apply. ``settle`` applies it:

1. in one Postgres transaction, lock the rows that still have a change to apply (FOR UPDATE);
2. one ``count_comments.lua`` call per shard applies each change with a marker (a record
   ``m:<comment_id>:<0|1>`` of the shard, daemon/store): a change whose marker exists is not applied
   again;
3. flip the rows' flags and commit; then delete the markers (best effort: the sweeper removes them
   after ENGAGEMENT_DRAIN_MARKER_TTL_S).

A crash or a failed commit after step 2 leaves the flag unflipped and the marker set: the next settle
finds the row again and the marker keeps it from counting twice. Redis unreachable in step 2 rolls back:
the row keeps its change to apply. The api settles each row it writes right after its commit;
``settle_pending`` (run by reconcile, and by the GDPR purge) settles whatever is left, e.g. every
comment posted or deleted while Redis was down.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from redis.exceptions import RedisError

from daemon.store import Store

CHUNK = 500  # rows per transaction

_BY_IDS = """
SELECT comment_id, content_id, soft_delete_flag FROM comments
WHERE comment_id = ANY($1::bigint[]) AND counted = soft_delete_flag
ORDER BY comment_id FOR UPDATE
"""
_ANY = """
SELECT comment_id, content_id, soft_delete_flag FROM comments
WHERE counted = soft_delete_flag
ORDER BY comment_id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
_FLIP = "UPDATE comments SET counted = NOT soft_delete_flag WHERE comment_id = ANY($1::bigint[])"


async def settle(store: Store, pool: asyncpg.Pool, ids: Sequence[int]) -> int:
    """Apply the pending count changes of these comment rows; the number applied (rows flipped)."""
    done = 0
    for start in range(0, len(ids), CHUNK):
        done += await _settle(store, pool, _BY_IDS, list(ids[start : start + CHUNK]))
    return done


async def settle_pending(store: Store, pool: asyncpg.Pool) -> int:
    """Apply every pending count change (rows other transactions hold are skipped: they are being
    settled). Returns the number of rows settled."""
    done = 0
    while True:
        settled = await _settle(store, pool, _ANY, CHUNK)
        done += settled
        if settled < CHUNK:
            return done


async def _settle(store: Store, pool: asyncpg.Pool, query: str, arg: object) -> int:
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(query, arg)
        if not rows:
            return 0
        # (content_id, comment_id, +1 to count it | -1 to uncount it): the state to reach
        changes = [(r["content_id"], r["comment_id"], -1 if r["soft_delete_flag"] else 1) for r in rows]
        await store.count_comments(changes, conn)
        await conn.execute(_FLIP, [row["comment_id"] for row in rows])
    try:  # committed: the flags now say it; the markers are no longer needed
        await store.forget_comment_marks(changes)
    except (RedisError, OSError):
        pass  # the sweeper removes them after ENGAGEMENT_DRAIN_MARKER_TTL_S
    return len(rows)
