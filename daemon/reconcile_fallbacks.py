"""Reconcile, part 1: the pairs the api wrote straight to Postgres while Redis was unreachable
(``fallback_log``, daemon/fallback.py), settled per shard under the shard's lease (daemon/reconcile.py)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg

from daemon import keys
from daemon.settings import Settings
from daemon.store import Store

log = logging.getLogger(__name__)


async def batch_state(store: Store, pool: asyncpg.Pool, shard: int) -> tuple[str, bool]:
    """(the shard's captured batch id or "", whether that batch is not yet in the flush ledger)."""
    batch_id = await store.pending_batch(shard)
    if not batch_id:
        return "", False
    committed = await pool.fetchval("SELECT 1 FROM flush_batches WHERE batch_id = $1", batch_id)
    return batch_id, committed is None


_LIKES = "SELECT user_id, content_id, value FROM likes WHERE content_id = ANY($1)"
_FALLBACKS = "SELECT id, kind, user_id, target_id FROM fallback_log WHERE NOT reconciled ORDER BY id"
_PRUNE_FALLBACK_KEYS = "DELETE FROM fallback_idempotency WHERE created_at < now() - make_interval(secs => $1)"
_SET_CONTENT_COUNTS = """
INSERT INTO content_counters AS c (content_id, likes, dislikes, updated_at)
SELECT *, now() FROM unnest($1::text[], $2::bigint[], $3::bigint[])
ON CONFLICT (content_id) DO UPDATE
SET likes = EXCLUDED.likes, dislikes = EXCLUDED.dislikes, updated_at = now()
"""
_SET_CREATOR_COUNTS = """
INSERT INTO creator_counters AS c (creator_id, subscribers, updated_at)
SELECT *, now() FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (creator_id) DO UPDATE SET subscribers = EXCLUDED.subscribers, updated_at = now()
"""


async def read_fallbacks(conn: asyncpg.Connection, settings: Settings) -> dict[int, list[asyncpg.Record]]:
    await conn.execute(_PRUNE_FALLBACK_KEYS, float(settings.idempotency_ttl_s))
    grouped: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for row in await conn.fetch(_FALLBACKS):
        grouped[keys.shard_of(row["target_id"], settings.shards)].append(row)
    return grouped


async def settle_fallbacks(
    store: Store, pool: asyncpg.Pool, owner: str, shard: int, rows: list[asyncpg.Record]
) -> bool:
    """Settle one shard's unreconciled fallback rows, under its lease; False when the lease or the
    batch changed (the shard is done again). Steps, each safe to repeat after a crash:

    1. Drop the pairs' pending like states and subscriptions (``sdelta``/``sbatch``,
       ``subdelta``/``subbatch``): they predate the Postgres write. Atomically, read what stays pending
       for the touched items and creators: the remaining pending states and the pending increments.
    2. In one Postgres transaction (SHARE on fallback_log: no fallback write in between): set the
       touched counters to COUNT(records with the remaining pending states applied) minus the pending
       increments -- so that once the flusher adds those increments, the counts equal the records --
       and mark the rows reconciled. The normal pass then sets the counts and the pairs' states Redis
       holds (and moves the shard's gen on, so that no cold load read before this commit seeds).
    """
    like_pairs = {keys.state_field(r["target_id"], r["user_id"]) for r in rows if r["kind"] == "like"}
    sub_pairs = {keys.state_field(r["target_id"], r["user_id"]) for r in rows if r["kind"] == "subscription"}
    items = sorted({r["target_id"] for r in rows if r["kind"] == "like"})
    creators = sorted({r["target_id"] for r in rows if r["kind"] == "subscription"})
    batch = await batch_state(store, pool, shard)
    fields = [keys.field(c, i) for i in items for c in ("likes", "dislikes")]
    fields += [keys.field("subscribers", c) for c in creators]
    result = await store.settle_fallbacks(
        shard, owner, batch, (sorted(like_pairs), sorted(sub_pairs)), fields
    )
    if result[0] != "ok":
        return False
    pending_likes, pending_subs, increments = (_pairs(r) for r in result[1:4])
    pending = {name: int(value) for name, value in increments}

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE fallback_log IN SHARE MODE")
        if items:
            like_counts = await _like_counts(conn, items, pending_likes)
            await conn.execute(
                _SET_CONTENT_COUNTS,
                items,
                [like_counts[i][0] - pending.get(keys.field("likes", i), 0) for i in items],
                [like_counts[i][1] - pending.get(keys.field("dislikes", i), 0) for i in items],
            )
        if creators:
            sub_counts = await _subscriber_counts(conn, creators, pending_subs)
            await conn.execute(
                _SET_CREATOR_COUNTS,
                creators,
                [sub_counts[c] - pending.get(keys.field("subscribers", c), 0) for c in creators],
            )
        await conn.execute(
            "UPDATE fallback_log SET reconciled = true WHERE id = ANY($1)", [r["id"] for r in rows]
        )
    return True


async def _like_counts(
    conn: asyncpg.Connection, items: list[str], pending: list[tuple[str, str]]
) -> dict[str, list[int]]:
    """[likes, dislikes] of each item: Postgres's like rows, overridden by the pending states."""
    likes = {
        keys.state_field(r["content_id"], r["user_id"]): int(r["value"])
        for r in await conn.fetch(
            "SELECT user_id, content_id, value FROM likes WHERE content_id = ANY($1)", items
        )
    }
    likes.update((name, int(value)) for name, value in pending)  # batch first, then delta
    counts = {i: [0, 0] for i in items}
    for name, value in likes.items():
        item = counts.get(name.split("|", 1)[0])
        if item is not None and value:
            item[0 if value == 1 else 1] += 1
    return counts


async def _subscriber_counts(
    conn: asyncpg.Connection, creators: list[str], pending: list[tuple[str, str]]
) -> dict[str, int]:
    """The subscribers of each creator: Postgres's rows, overridden by the pending subscriptions."""
    subs = {
        keys.state_field(r["creator_id"], r["user_id"]): 1
        for r in await conn.fetch(
            "SELECT user_id, creator_id FROM creator_subscriptions WHERE creator_id = ANY($1)", creators
        )
    }
    subs.update((name, int(value)) for name, value in pending)
    counts = dict.fromkeys(creators, 0)
    for name, value in subs.items():
        creator = name.split("|", 1)[0]
        if creator in counts and int(value):
            counts[creator] += 1
    return counts


def _pairs(flat: Sequence[Any]) -> list[tuple[str, str]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
