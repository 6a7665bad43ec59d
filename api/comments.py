"""Comments and replies: POST|GET /api/v1/content/{contentId}/comments, DELETE …/comments/{commentId}.

The rows live in Postgres (daemon/comment_store.py); the count of an item's comments lives in Redis like the
other counters and reaches ``content_counters.comments`` through the flusher (daemon/comment_counts.py).
Pagination is a keyset on (created_at, comment_id) carried in an opaque cursor, so a page boundary never
moves when comments arrive: no duplicates, no skips. Seed 003 has no comment event type: none is emitted.
"""

from __future__ import annotations

import base64
import logging
import re
import zlib
from datetime import UTC, datetime, timedelta

import asyncpg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.idempotency import idempotency_key
from api.ingest import integral, json_object
from api.instrument import instrumented
from api.pagination import MAX_ID, bad_cursor, limit_param, positive_int
from api.reactions import check_rate
from api.services import Services
from daemon import comment_counts, comment_store
from daemon.errors import PG_ERRORS, ColdLoadError

log = logging.getLogger(__name__)

COMMENTS_ROUTE = "/api/v1/content/{contentId}/comments"
COMMENT_ROUTE = "/api/v1/content/{contentId}/comments/{commentId}"

_FIELDS = frozenset({"body", "parent_comment_id"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"([0-9]{1,20})\.([0-9]{1,19})\.([0-9]{1,10})")


def parse_comment(body: bytes, max_chars: int) -> tuple[str, int | None]:
    """(body trimmed, parent_comment_id) from ``{"body": str, "parent_comment_id"?: int|null}``."""
    data = json_object(body, _FIELDS)
    text = data.get("body")
    if not isinstance(text, str):
        raise ApiError(422, "invalid_comment_body", "body is required and must be a string.")
    text = text.strip()
    if not text:
        raise ApiError(422, "empty_comment_body", "body must not be empty or only whitespace.")
    if len(text) > max_chars:
        raise ApiError(422, "comment_body_too_long", f"body must be at most {max_chars} characters.")
    if "\x00" in text:
        raise ApiError(422, "invalid_comment_body", "body must not contain NUL characters.")
    parent = integral(data.get("parent_comment_id"))
    if parent is not None and (type(parent) is not int or not 1 <= parent <= MAX_ID):
        raise _bad_parent()
    return text, parent


def _bad_parent() -> ApiError:
    return ApiError(
        422, "invalid_parent_comment_id", "parent_comment_id must be a positive integer comment id."
    )


def _positive_id(value: str | None, error: ApiError) -> int:
    checked = positive_int(value)
    if checked is None:
        raise error
    return checked


def _scope(content_id: str, parent_id: int | None) -> int:
    return zlib.crc32(f"{content_id}|{parent_id or ''}".encode())


def encode_cursor(row: asyncpg.Record, content_id: str, parent_id: int | None) -> str:
    micros = (row["created_at"] - _EPOCH) // timedelta(microseconds=1)
    raw = f"{micros}.{row['comment_id']}.{_scope(content_id, parent_id)}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, content_id: str, parent_id: int | None) -> tuple[datetime, int]:
    """The keyset position a cursor carries; 400 invalid_cursor when it is not one of this listing's."""
    bad = bad_cursor()
    if len(cursor) > 96:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except ValueError:
        raise bad from None
    match = _CURSOR.fullmatch(raw)
    if match is None or int(match[3]) != _scope(content_id, parent_id) or int(match[2]) > MAX_ID:
        raise bad
    try:
        return _EPOCH + timedelta(microseconds=int(match[1])), int(match[2])
    except OverflowError:
        raise bad from None


async def _pool(services: Services) -> asyncpg.Pool:
    try:
        return await services.pool()
    except PG_ERRORS as exc:
        log.warning("comments unavailable: Postgres unreachable (%s)", exc)
        raise services.unavailable("Comments are temporarily unavailable.") from None


async def _settle(services: Services, pool: asyncpg.Pool, comment_id: int) -> None:
    """Apply the row's count change now; if Redis (or Postgres) fails, it stays pending on the row and
    reconcile applies it (the comment itself is already committed)."""
    try:
        await comment_counts.settle(services.store, pool, [comment_id])
    except (RedisError, ColdLoadError) as exc:
        services.metrics.fallback_writes.labels(kind="comment").inc()
        log.warning("comment %d: count change left for reconcile, Redis unavailable (%s)", comment_id, exc)
    except PG_ERRORS as exc:
        log.warning("comment %d: count change left for reconcile (%s)", comment_id, exc)


@instrumented(COMMENTS_ROUTE)
async def post_comment(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    content_id = services.bodies.content_id(request.path_params["contentId"])
    key = idempotency_key(request)
    max_chars = services.settings.comment_max_chars
    # A character is at most 12 bytes of JSON (an escaped surrogate pair).
    body = await services.bodies.read_json(request, 12 * max_chars + 1024)
    text, parent_id = parse_comment(body, max_chars)
    await check_rate(services, "comment", principal.sub, f"{content_id}|{key}" if key else None)
    pool = await _pool(services)
    try:
        async with pool.acquire() as conn:
            posted = await comment_store.post(
                conn, content_id, principal.sub, text, parent_id, key, services.settings.idempotency_ttl_s
            )
    except PG_ERRORS as exc:
        log.warning("comment refused: Postgres unavailable (%s)", exc)
        raise services.unavailable("Comments are temporarily unavailable.") from None
    if posted.status == "created":
        await _settle(services, pool, posted.comment["comment_id"])
        return json_response(posted.comment, 201)
    return json_response(posted.comment, 201, headers={"Idempotent-Replayed": "true"})


@instrumented(COMMENTS_ROUTE)
async def list_comments(request: Request) -> Response:
    services: Services = request.app.state.services
    content_id = services.bodies.content_id(request.path_params["contentId"])
    services.auth.authenticate(request.headers.get("authorization"))  # optional, but valid if sent
    query = request.query_params
    limit = limit_param(request)
    parent_id = None
    if "parent_comment_id" in query:
        parent_id = _positive_id(query["parent_comment_id"], _bad_parent())
    after = decode_cursor(query["cursor"], content_id, parent_id) if query.get("cursor") else None
    pool = await _pool(services)
    try:
        async with pool.acquire() as conn:
            if parent_id is not None and not await comment_store.thread_exists(conn, content_id, parent_id):
                raise ApiError(
                    404, "parent_comment_not_found", "parent_comment_id names no comment on this item."
                )
            rows = await comment_store.page(conn, content_id, parent_id, after, limit + 1)
    except PG_ERRORS as exc:
        log.warning("comments unavailable: Postgres unreachable (%s)", exc)
        raise services.unavailable("Comments are temporarily unavailable.") from None
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1], content_id, parent_id) if more else None
    return json_response({"items": [comment_store.public(r) for r in rows], "next_cursor": next_cursor})


@instrumented(COMMENT_ROUTE)
async def delete_comment(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    content_id = services.bodies.content_id(request.path_params["contentId"])
    comment_id = _positive_id(
        request.path_params["commentId"],
        ApiError(422, "invalid_comment_id", "commentId must be a positive integer comment id."),
    )
    pool = await _pool(services)
    try:
        async with pool.acquire() as conn:
            deleted = await comment_store.delete(conn, content_id, comment_id, principal.sub)
    except PG_ERRORS as exc:
        log.warning("comment deletion refused: Postgres unavailable (%s)", exc)
        raise services.unavailable("Comments are temporarily unavailable.") from None
    if deleted:
        await _settle(services, pool, comment_id)
    return Response(status_code=204)
