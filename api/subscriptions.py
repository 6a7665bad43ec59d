"""Creator subscriptions: POST|DELETE /api/v1/creators/{creatorId}/subscribe and GET …/creators/{creatorId}.

One ``set_subscription`` script call per request checks the Idempotency-Key, reads and writes the user's
subscription and moves the creator's subscriber count, atomically in the creator's slot (the shard of the
creator id). The flusher writes the counts to ``creator_counters`` and the records to
``creator_subscriptions`` in the same transaction.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.idempotency import idempotency_key
from api.instrument import instrumented
from api.reactions import check_rate
from api.services import Services
from daemon import keys
from daemon.errors import PG_ERRORS
from daemon.reactions import SUBSCRIPTION_STATES, set_subscription

log = logging.getLogger(__name__)

SUBSCRIBE_ROUTE = "/api/v1/creators/{creatorId}/subscribe"
CREATOR_ROUTE = "/api/v1/creators/{creatorId}"


def creator_id(services: Services, value: str) -> str:
    """A creator id has the syntax of a content id (1-128 characters of A-Z a-z 0-9 _ . : -)."""
    if not services.bodies.id_re.fullmatch(value):
        raise ApiError(
            422,
            "invalid_creator_id",
            f"creatorId must be 1 to {services.settings.content_id_max_len} characters"
            " of A-Z a-z 0-9 _ . : -",
        )
    return value


def _endpoint(action: str):  # type: ignore[no-untyped-def]
    async def change(request: Request) -> Response:
        services: Services = request.app.state.services
        principal = services.auth.require(request.headers.get("authorization"))
        creator = creator_id(services, request.path_params["creatorId"])
        if action == "subscribe" and principal.sub == creator:
            raise ApiError(422, "self_subscription", "A user cannot subscribe to themself.")
        key = idempotency_key(request)
        await check_rate(services, "subscribe", principal.sub, f"{creator}|{key}" if key else None)
        result = await set_subscription(services, creator, principal.sub, action, key)
        if result["status"] == "changed" and services.events is not None:
            services.events.subscription(principal.sub, creator, action == "subscribe")
        headers = {"Idempotent-Replayed": "true"} if result["status"] == "replayed" else None
        return json_response(result["body"], headers=headers)

    change.__name__ = f"{action}_creator"
    return instrumented(SUBSCRIBE_ROUTE)(change)


subscribe = _endpoint("subscribe")
unsubscribe = _endpoint("unsubscribe")


@instrumented(CREATOR_ROUTE)
async def get_creator(request: Request) -> Response:
    """The creator's subscriber count from Redis, from ``creator_counters`` when Redis is unreachable
    or no longer holds it (then seeded, so the next read is Redis's); plus the caller's
    ``viewer_state`` when a token is given."""
    services: Services = request.app.state.services
    creator = creator_id(services, request.path_params["creatorId"])
    principal = services.auth.authenticate(request.headers.get("authorization"))
    subscribers: int | None = None
    viewer: int | None = None
    shard = keys.shard_of(creator, services.settings.shards)
    counts_key = keys.creator_key(shard, creator)
    state_key = keys.subscription_key(shard, creator, principal.sub) if principal is not None else ""
    redis_up = True
    tokens: dict[str, str] = {}
    try:
        values, tokens = await services.store.read([counts_key, state_key] if state_key else [counts_key])
        if counts_key in values:
            subscribers = int(values[counts_key].get("subscribers", 0))
        if state_key in values:
            viewer = int(values[state_key])
        services.store.loader.add_hits(
            {("creator" if n == counts_key else "subscription"): 1 for n in values}
        )
        for name in tokens:
            services.metrics.cold_loads.labels(kind="creator" if name == counts_key else "subscription").inc()
    except (RedisError, OSError) as exc:
        log.warning("creator counts from Postgres: Redis unavailable (%s)", exc)
        redis_up = False
    source = "redis"
    if subscribers is None or (principal is not None and viewer is None):  # Redis down, or cold
        found, found_viewer = await _from_postgres(services, creator, principal.sub if principal else None)
        seeds: dict[str, object] = {}
        if subscribers is None:
            subscribers, source = found, "postgres"
            seeds[counts_key] = ["subscribers", str(found)]
        ttls = {}
        if principal is not None and viewer is None:
            viewer = found_viewer
            seeds[state_key] = str(found_viewer)
            if not found_viewer:  # a reader who never subscribed: kept minutes, not days
                ttls[state_key] = services.settings.state_read_ttl_s
        if redis_up:
            await _seed(services, tokens, seeds, ttls)
    body: dict[str, object] = {"creator_id": creator, "subscribers": subscribers}
    if principal is not None:
        body["viewer_state"] = SUBSCRIPTION_STATES[viewer or 0]
    return json_response(body, headers={"X-Counts-Source": source})


async def _seed(
    services: Services, tokens: dict[str, str], values: dict[str, object], ttls: dict[str, int]
) -> None:
    """Keep what a read found in Postgres in Redis for the next read (best effort)."""
    try:
        await services.store.seed(tokens, values, ttls)
    except (RedisError, OSError) as exc:
        log.info("cold keys not seeded (%s)", exc)


async def _from_postgres(services: Services, creator: str, user_id: str | None) -> tuple[int, int]:
    try:
        pool = await services.pool()
        async with pool.acquire() as conn:
            subscribers = await conn.fetchval(
                "SELECT subscribers FROM creator_counters WHERE creator_id = $1", creator
            )
            viewer = 0
            if user_id is not None:
                viewer = await conn.fetchval(
                    "SELECT count(*) FROM creator_subscriptions WHERE user_id = $1 AND creator_id = $2",
                    user_id,
                    creator,
                )
    except PG_ERRORS as exc:
        log.warning("creator counts unavailable: Postgres unreachable too (%s)", exc)
        raise services.unavailable("Counts are temporarily unavailable.") from None
    return int(subscribers or 0), int(viewer)
