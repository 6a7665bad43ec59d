"""Watch history: PUT|GET /api/v1/users/me/history/{contentId}, GET|DELETE /api/v1/users/me/history.

Heartbeats go to Redis (one ``record_history`` call, coalesced there and flushed in batches by the
flusher; see daemon/history.py); while Redis is unreachable they are written straight to Postgres. Reads
take the unflushed entries from Redis and the rest from Postgres. A clear needs both: without Redis it
could not remove the heartbeats still pending there, so it answers 503.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.ingest import integral, json_object
from api.instrument import instrumented
from api.pagination import bad_cursor, cursor_param, encode_cursor, limit_param
from api.reactions import check_rate
from api.services import Services
from daemon import history
from daemon.errors import PG_ERRORS, REDIS_ERRORS
from daemon.history import POSITION_MAX, Entry

log = logging.getLogger(__name__)

HISTORY_ROUTE = "/api/v1/users/me/history"
ENTRY_ROUTE = "/api/v1/users/me/history/{contentId}"

_FIELDS = frozenset({"progress_pct", "position_seconds"})
_CURSOR_TS_MAX = history.to_us(datetime.max.replace(tzinfo=UTC))


def parse_heartbeat(body: bytes) -> tuple[float, int]:
    """(progress_pct, position_seconds) from ``{"progress_pct": 0..100, "position_seconds": int >= 0}``."""
    doc = json_object(body, _FIELDS)
    progress = doc.get("progress_pct")
    if (
        type(progress) not in (int, float) or not math.isfinite(progress) or not 0 <= progress <= 100  # type: ignore[operator]
    ):
        raise ApiError(422, "invalid_progress_pct", "progress_pct must be a number from 0 to 100.")
    position = integral(doc.get("position_seconds"))
    if type(position) is not int or not 0 <= position <= POSITION_MAX:
        raise ApiError(
            422, "invalid_position_seconds", f"position_seconds must be an integer from 0 to {POSITION_MAX}."
        )
    return float(progress), position  # type: ignore[arg-type]


@instrumented(ENTRY_ROUTE)
async def put_entry(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    content_id = services.bodies.content_id(request.path_params["contentId"])
    progress, position = parse_heartbeat(
        await services.bodies.read_json(request, services.settings.body_max_bytes)
    )
    await check_rate(services, "history", principal.sub, None)
    try:
        entry = await history.record(services.store, principal.sub, content_id, progress, position)
    except REDIS_ERRORS as exc:
        log.warning("heartbeat written to Postgres: Redis unavailable (%s)", exc)
        try:
            pool = await services.pool()
            entry = await history.record_in_postgres(pool, principal.sub, content_id, progress, position)
        except PG_ERRORS as pg_exc:
            log.warning("heartbeat refused: Postgres unavailable too (%s)", pg_exc)
            raise services.unavailable("Watch history is temporarily unavailable.") from None
        services.metrics.fallback_writes.labels(kind="history").inc()
    return json_response(entry.as_json())


@instrumented(ENTRY_ROUTE)
async def get_entry(request: Request) -> Response:
    """The resume position: the unflushed entry in Redis, else the Postgres row."""
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    content_id = services.bodies.content_id(request.path_params["contentId"])
    entry: Entry | None = None
    try:
        entry = (
            await history.pending(services.redis, services.settings.shards, principal.sub, content_id)
        ).get(content_id)
    except REDIS_ERRORS as exc:
        log.warning("resume position from Postgres only: Redis unavailable (%s)", exc)
    if entry is None:
        try:
            entry = await history.stored(await services.pool(), principal.sub, content_id)
        except PG_ERRORS as exc:
            log.warning("resume position unavailable: Postgres unreachable (%s)", exc)
            raise services.unavailable("Watch history is temporarily unavailable.") from None
    if entry is None:
        raise ApiError(404, "history_entry_not_found", "This item is not in the watch history.")
    return json_response(entry.as_json())


@instrumented(HISTORY_ROUTE)
async def list_entries(request: Request) -> Response:
    """Most recently watched first: ``{"items": [...], "next_cursor": str | null}``."""
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    limit = limit_param(request)
    after = _history_cursor(services, cursor_param(request))
    unflushed: dict[str, Entry] = {}
    try:
        unflushed = await history.pending(services.redis, services.settings.shards, principal.sub)
    except REDIS_ERRORS as exc:
        log.warning("history from Postgres only: Redis unavailable (%s)", exc)
    try:
        entries, last = await history.page(await services.pool(), principal.sub, unflushed, limit, after)
    except PG_ERRORS as exc:
        log.warning("history unavailable: Postgres unreachable (%s)", exc)
        raise services.unavailable("Watch history is temporarily unavailable.") from None
    next_cursor = None if last is None else encode_cursor([last.ts_us, last.content_id])
    return json_response({"items": [e.as_json() for e in entries], "next_cursor": next_cursor})


def _history_cursor(services: Services, value: object) -> tuple[int, str] | None:
    """The ``[last_watched_at µs, content_id]`` a ``next_cursor`` carries: a time Python and Postgres can
    hold and a valid content id (anything else would fail in the query, not be refused)."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or type(value[0]) is not int
        or not 0 <= value[0] <= _CURSOR_TS_MAX
        or not isinstance(value[1], str)
        or not services.bodies.id_re.fullmatch(value[1])
    ):
        raise bad_cursor()
    return value[0], value[1]


@instrumented(HISTORY_ROUTE)
async def clear(request: Request) -> Response:
    """204 once the user's history is gone from Redis and Postgres; 503 if either is unreachable."""
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    await check_rate(services, "history", principal.sub, None)
    try:
        pool = await services.pool()
        await history.purge_history(services.store, pool, principal.sub)
    except (*REDIS_ERRORS, *PG_ERRORS) as exc:
        log.warning("history clear refused: %s", exc)
        raise services.unavailable("Watch history cannot be cleared right now; retry.") from None
    return Response(status_code=204)
