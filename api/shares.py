"""Shares: POST /api/v1/content/{contentId}/shares.

A share is an analytics record (one row in ``shares``) and a count (``shares:<content_id>`` in the live
and delta hashes, so the flusher adds it to ``content_counters.shares`` exactly once). The two are tied
together in this order:

1. insert the row inside an open Postgres transaction (``share_id`` comes from it);
2. one ``add_share`` script call checks the Idempotency-Key record, counts the share and stores the
   answer, atomically in the item's slot;
3. commit.

A replayed or reused Idempotency-Key rolls the row back (no second row, no second count). Redis failing
in step 2 rolls the row back and answers 503. The commit failing in step 3 takes the count back with an
``undo`` call (and answers 503). What remains unexplained is only a lost reply: a Redis reply lost after
the script ran (the row is rolled back but the share was counted), or a commit whose acknowledgement was
lost (the row exists, the count is taken back). Both are logged; the ``shares`` table is the record a
reconciliation recounts from.
"""

from __future__ import annotations

import logging
import re

import asyncpg
from redis.exceptions import OutOfMemoryError, RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response, memory_full
from api.idempotency import idempotency_key, reused
from api.ingest import json_object
from api.instrument import instrumented
from api.reactions import check_rate
from api.services import Services
from api.subscriptions import unavailable
from daemon.store.cold import ColdLoadError

log = logging.getLogger(__name__)

SHARES_ROUTE = "/api/v1/content/{contentId}/shares"

_FIELDS = frozenset({"platform", "external"})
PLATFORM_PATTERN = "[a-z0-9_-]{1,32}"
_PLATFORM = re.compile(PLATFORM_PATTERN)
_PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
_INSERT = (
    "INSERT INTO shares (content_id, user_id, platform, external) VALUES ($1, $2, $3, $4) RETURNING share_id"
)


def parse_share(body: bytes) -> tuple[str, bool]:
    """(platform, external) from the JSON body ``{"platform": str, "external"?: bool}``."""
    data = json_object(body, _FIELDS)
    platform = data.get("platform")
    if not isinstance(platform, str) or not _PLATFORM.fullmatch(platform):
        raise ApiError(422, "invalid_platform", "platform must be 1 to 32 characters of a-z 0-9 _ -.")
    external = data.get("external", False)
    if not isinstance(external, bool):
        raise ApiError(422, "invalid_external", "external must be true or false.")
    return platform, external


async def add_share(
    services: Services, content_id: str, user_id: str, platform: str, external: bool, key: str
) -> dict:
    fingerprint = f"{platform}|{int(external)}" if key else ""
    try:
        pool = await services.pool()
        conn = await pool.acquire()
    except _PG_ERRORS as exc:
        log.warning("share refused: Postgres unavailable (%s)", exc)
        raise unavailable(services, "Shares are temporarily unavailable.") from exc
    try:
        transaction = conn.transaction()
        try:
            await transaction.start()
            share_id = await conn.fetchval(_INSERT, content_id, user_id, platform, external)
        except _PG_ERRORS as exc:
            log.warning("share refused: Postgres unavailable (%s)", exc)
            raise unavailable(services, "Shares are temporarily unavailable.") from exc
        try:
            status, counted_id, shares = await services.store.add_share(
                content_id, user_id, key, fingerprint, share_id, "add", conn
            )
        except OutOfMemoryError as exc:
            await _rollback(transaction)
            services.metrics.redis_oom_refusals.labels(what="request").inc()
            raise memory_full(services.settings.buffer_retry_after_s) from exc
        except (RedisError, ColdLoadError, *_PG_ERRORS) as exc:
            await _rollback(transaction)
            log.warning("share %s not recorded: Redis unavailable (%s); row rolled back", share_id, exc)
            raise unavailable(services, "Shares are temporarily unavailable.") from exc
        if status != "added":  # replayed or conflict: this request adds nothing
            await _rollback(transaction)
            if status == "conflict":
                raise reused("item")
        else:
            try:
                await transaction.commit()
            except _PG_ERRORS as exc:
                await _undo(services, content_id, user_id, key, fingerprint, share_id)
                log.warning("share %s not recorded: commit failed (%s); count taken back", share_id, exc)
                raise unavailable(services, "Shares are temporarily unavailable.") from exc
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
    except _PG_ERRORS as exc:  # the connection is gone: the server rolls back anyway
        log.warning("share rollback failed (%s)", exc)


async def _undo(
    services: Services, content_id: str, user_id: str, key: str, fingerprint: str, share_id: int
) -> None:
    try:
        await services.store.add_share(content_id, user_id, key, fingerprint, share_id, "undo")
    except (RedisError, ColdLoadError, *_PG_ERRORS) as exc:
        log.error("share %s of %s counted without its row: undo failed (%s)", share_id, content_id, exc)


@instrumented(SHARES_ROUTE)
async def share(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    content_id = services.bodies.content_id(request.path_params["contentId"])
    key = idempotency_key(request)
    platform, external = parse_share(await services.bodies.read(request, services.settings.body_max_bytes))
    await check_rate(services, "share", principal.sub, f"{content_id}|{key}" if key else None)
    result = await add_share(services, content_id, principal.sub, platform, external, key)
    if result["status"] == "added" and services.events is not None:
        services.events.share(principal.sub, content_id)
    headers = {"Idempotent-Replayed": "true"} if result["status"] == "replayed" else None
    return json_response(result["body"], 201, headers=headers)
