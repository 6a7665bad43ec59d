"""Counts of one content item: Redis live counts, Postgres when Redis is unavailable."""

from __future__ import annotations

import logging

import asyncpg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.instrument import instrumented
from api.reactions import STATE_NAMES
from api.services import Services
from daemon import keys

log = logging.getLogger(__name__)

STATS_ROUTE = "/api/v1/content/{contentId}/stats"
STAT_FIELDS = ("views", "likes", "dislikes", "comments", "shares")
# HyperLogLog estimates (standard error 0.81%), exact for small counts; see api/viewers.py.
UNIQUE_FIELDS = ("unique_viewers", "unique_viewers_today")


@instrumented(STATS_ROUTE)
async def get_stats(request: Request) -> Response:
    services: Services = request.app.state.services
    content_id = services.bodies.content_id(request.path_params["contentId"])
    principal = services.auth.authenticate(request.headers.get("authorization"))
    counts: dict[str, int] | None = None
    viewer: int | None = None
    try:
        shard = keys.shard_of(content_id, services.settings.shards)
        today = keys.uv_day(services.settings.unique_viewers_day)
        pipe = services.redis.pipeline(transaction=False)  # one round trip, all keys in the item's slot
        pipe.hmget(keys.live_key(shard), [keys.field(f, content_id) for f in STAT_FIELDS])
        # execute_command: redis-py's cluster pipeline refuses pfcount() but routes PFCOUNT by its key
        pipe.execute_command("PFCOUNT", keys.uv_key(shard, content_id))
        pipe.execute_command("PFCOUNT", keys.uv_day_key(shard, today, content_id))
        if principal is not None:
            pipe.hget(keys.state_key(shard), keys.state_field(content_id, principal.sub))
        results = await pipe.execute()
        if any(v is not None for v in results[0]):
            counts = {f: int(v or 0) for f, v in zip(STAT_FIELDS, results[0], strict=True)}
            counts["unique_viewers"], counts["unique_viewers_today"] = int(results[1]), int(results[2])
        if principal is not None:
            viewer = int(results[3] or 0)
    except (RedisError, OSError) as exc:
        log.warning("stats from Postgres: Redis unavailable (%s)", exc)
    source = "redis"
    if counts is None:  # Redis down, or it holds no live counts for this item
        counts = await _from_postgres(services, content_id)
        source = "postgres"
        if principal is not None and viewer is None:
            viewer = await _viewer_from_postgres(services, content_id, principal.sub)
    body: dict[str, object] = {"content_id": content_id, **counts}
    if principal is not None:
        body["viewer_state"] = STATE_NAMES[viewer or 0]
    return json_response(body, headers={"X-Counts-Source": source})


async def _viewer_from_postgres(services: Services, content_id: str, user_id: str) -> int:
    try:
        pool = await services.pool()
        value = await pool.fetchval(
            "SELECT value FROM likes WHERE user_id = $1 AND content_id = $2", user_id, content_id
        )
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return 0
    return int(value or 0)


_FROM_POSTGRES = """
SELECT c.views, c.likes, c.dislikes, c.comments, c.shares,
       (SELECT unique_viewers FROM content_unique_viewers WHERE content_id = $1) AS unique_viewers,
       (SELECT unique_viewers FROM content_unique_viewers_daily WHERE content_id = $1 AND day = $2)
           AS unique_viewers_today
FROM (SELECT 1) AS one LEFT JOIN content_counters c ON c.content_id = $1
"""


async def _from_postgres(services: Services, content_id: str) -> dict[str, int]:
    today = keys.day_date(keys.uv_day(services.settings.unique_viewers_day))
    try:
        pool = await services.pool()
        row = await pool.fetchrow(_FROM_POSTGRES, content_id, today)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        log.warning("stats unavailable: Postgres unreachable too (%s)", exc)
        retry = {"Retry-After": str(services.settings.buffer_retry_after_s)}
        raise ApiError(503, "unavailable", "Counts are temporarily unavailable.", retry) from None
    return {f: int(row[f] or 0) for f in (*STAT_FIELDS, *UNIQUE_FIELDS)}
