"""Shares, for ``POST /api/v1/content/{contentId}/shares`` and the consumer's ``media_shared``.

A share is an analytics record (one row in ``shares``) and a count (``shares:<content_id>`` in the live
and delta hashes, so the flusher adds it to ``content_counters.shares`` exactly once). The two are tied
together in this order:

1. insert the row inside an open Postgres transaction (``share_id`` comes from it);
2. one ``add_share`` script call checks the Idempotency-Key record, counts the share and stores the
   answer, atomically in the item's slot;
3. commit.

A replayed or reused Idempotency-Key rolls the row back (no second row, no second count). Redis failing in
step 2 rolls the row back and raises ``Unavailable`` (a 503). The commit failing in step 3 takes the count
back with an ``undo`` call (and raises ``Unavailable``). What remains unexplained is only a lost reply: a
Redis reply lost after the script ran (the row is rolled back but the share was counted), or a commit whose
acknowledgement was lost (the row exists, the count is taken back). Both are logged; the ``shares`` table is
the record a reconciliation recounts from.
"""

from __future__ import annotations

import logging

import asyncpg
from redis.exceptions import OutOfMemoryError

from daemon.core import Core
from daemon.errors import PG_ERRORS, REDIS_ERRORS, ColdLoadError, KeyReused, MemoryFull

log = logging.getLogger(__name__)

_UNAVAILABLE = "Shares are temporarily unavailable."

_INSERT = (
    "INSERT INTO shares (content_id, user_id, platform, external) VALUES ($1, $2, $3, $4) RETURNING share_id"
)


async def add_share(
    core: Core, content_id: str, user_id: str, platform: str, external: bool, key: str
) -> dict:
    """Record and count one share (see the module docstring): ``{"status", "body"}``, status ``added``
    or ``replayed``. Raises ``KeyReused``, ``MemoryFull`` or ``Unavailable``."""
    fingerprint = f"{platform}|{int(external)}" if key else ""
    try:
        pool = await core.pool()
        conn = await pool.acquire()
    except PG_ERRORS as exc:
        log.warning("share refused: Postgres unavailable (%s)", exc)
        raise core.unavailable(_UNAVAILABLE) from exc
    try:
        transaction = conn.transaction()
        try:
            await transaction.start()
            share_id = await conn.fetchval(_INSERT, content_id, user_id, platform, external)
        except PG_ERRORS as exc:
            log.warning("share refused: Postgres unavailable (%s)", exc)
            raise core.unavailable(_UNAVAILABLE) from exc
        try:
            status, counted_id, shares = await core.store.add_share(
                content_id, user_id, key, fingerprint, share_id, "add", conn
            )
        except OutOfMemoryError as exc:
            await _rollback(transaction)
            core.metrics.redis_oom_refusals.labels(what="request").inc()
            raise MemoryFull(core.settings.buffer_retry_after_s) from exc
        except (*REDIS_ERRORS, ColdLoadError, *PG_ERRORS) as exc:
            await _rollback(transaction)
            log.warning("share %s not recorded: Redis unavailable (%s); row rolled back", share_id, exc)
            raise core.unavailable(_UNAVAILABLE) from exc
        if status != "added":  # replayed or conflict: this request adds nothing
            await _rollback(transaction)
            if status == "conflict":
                raise KeyReused("item")
        else:
            try:
                await transaction.commit()
            except PG_ERRORS as exc:
                await _undo(core, content_id, user_id, key, fingerprint, share_id)
                log.warning("share %s not recorded: commit failed (%s); count taken back", share_id, exc)
                raise core.unavailable(_UNAVAILABLE) from exc
    finally:
        await pool.release(conn)
    return {
        "status": status,
        "body": {
            "share_id": int(counted_id),
            "content_id": content_id,
            "platform": platform,
            "external": external,
            "shares": int(shares),
        },
    }


async def _rollback(transaction: asyncpg.transaction.Transaction) -> None:
    try:
        await transaction.rollback()
    except PG_ERRORS as exc:  # the connection is gone: the server rolls back anyway
        log.warning("share rollback failed (%s)", exc)


async def _undo(core: Core, content_id: str, user_id: str, key: str, fingerprint: str, share_id: int) -> None:
    try:
        await core.store.add_share(content_id, user_id, key, fingerprint, share_id, "undo")
    except (*REDIS_ERRORS, ColdLoadError, *PG_ERRORS) as exc:
        log.error("share %s of %s counted without its row: undo failed (%s)", share_id, content_id, exc)
