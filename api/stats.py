"""Counts of one content item: Redis live counts, Postgres when Redis is unavailable."""

from __future__ import annotations

import logging

import asyncpg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.instrument import instrumented
from api.services import Services
from daemon import keys

log = logging.getLogger(__name__)

STAT_FIELDS = ("views", "likes", "dislikes", "comments", "shares")


@instrumented("/api/v1/content/{contentId}/stats")
async def get_stats(request: Request) -> Response:
    services: Services = request.app.state.services
    content_id = services.bodies.content_id(request.path_params["contentId"])
    services.auth.authenticate(request.headers.get("authorization"))
    counts: dict[str, int] | None = None
    try:
        shard = keys.shard_of(content_id, services.settings.shards)
        fields = [keys.field(f, content_id) for f in STAT_FIELDS]
        live = await services.redis.hmget(keys.live_key(shard), fields)
        if any(v is not None for v in live):
            counts = {f: int(v or 0) for f, v in zip(STAT_FIELDS, live, strict=True)}
    except (RedisError, OSError) as exc:
        log.warning("stats from Postgres: Redis unavailable (%s)", exc)
    source = "redis"
    if counts is None:  # Redis down, or it holds no live counts for this item
        counts = await _from_postgres(services, content_id)
        source = "postgres"
    return json_response({"content_id": content_id, **counts}, headers={"X-Counts-Source": source})


async def _from_postgres(services: Services, content_id: str) -> dict[str, int]:
    try:
        pool = await services.pool()
        row = await pool.fetchrow(
            "SELECT views, likes, dislikes, comments, shares FROM content_counters WHERE content_id = $1",
            content_id,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        log.warning("stats unavailable: Postgres unreachable too (%s)", exc)
        retry = {"Retry-After": str(services.settings.buffer_retry_after_s)}
        raise ApiError(503, "unavailable", "Counts are temporarily unavailable.", retry) from None
    return {f: int(row[f]) if row else 0 for f in STAT_FIELDS}
