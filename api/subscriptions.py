"""Creator subscriptions: POST|DELETE /api/v1/creators/{creatorId}/subscribe and GET …/creators/{creatorId}.

One ``set_subscription`` script call per request checks the Idempotency-Key, reads and writes the user's
subscription and moves the creator's subscriber count, atomically in the creator's slot (the shard of the
creator id). The flusher writes the counts to ``creator_counters`` and the records to
``creator_subscriptions`` in the same transaction.
"""

from __future__ import annotations

import logging

import asyncpg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api import fallback
from api.errors import ApiError, json_response
from api.idempotency import idempotency_key, reused
from api.instrument import instrumented
from api.reactions import check_rate
from api.services import Services
from daemon import keys

log = logging.getLogger(__name__)

SUBSCRIBE_ROUTE = "/api/v1/creators/{creatorId}/subscribe"
CREATOR_ROUTE = "/api/v1/creators/{creatorId}"

SUBSCRIPTION_STATES = {1: "subscribed", 0: "none"}
_PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def unavailable(services: Services, message: str) -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": str(services.settings.buffer_retry_after_s)})


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


async def set_subscription(services: Services, creator: str, user_id: str, action: str, key: str) -> dict:
    shard = keys.shard_of(creator, services.settings.shards)
    idem = keys.sub_idem_key(shard, creator, user_id, key if key else "-")
    live, delta = keys.live_key(shard), keys.delta_key(shard)
    script_keys = [live, delta, keys.subs_key(shard), keys.subdelta_key(shard)]
    try:
        status, state, subscribers = await services.scripts.set_subscription(
            services.redis,
            [*script_keys, idem],
            [creator, user_id, action, services.settings.idempotency_ttl_s, action if key else ""],
        )
    except (RedisError, OSError):
        # Redis unreachable: written straight to Postgres (api/fallback.py). A lost reply whose script
        # did run is harmless: the Postgres write wins and reconcile drops the pair's pending Redis state.
        return await fallback.set_subscription(services, creator, user_id, action, key)
    if status == "conflict":
        raise reused("creator")
    return {
        "status": status,
        "body": {
            "creator_id": creator,
            "state": SUBSCRIPTION_STATES[int(state)],
            "subscribers": int(subscribers),
        },
    }


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
    or holds no live count; plus the caller's ``viewer_state`` when a token is given."""
    services: Services = request.app.state.services
    creator = creator_id(services, request.path_params["creatorId"])
    principal = services.auth.authenticate(request.headers.get("authorization"))
    subscribers: int | None = None
    viewer: int | None = None
    try:
        shard = keys.shard_of(creator, services.settings.shards)
        pipe = services.redis.pipeline(transaction=False)
        pipe.hget(keys.live_key(shard), keys.field("subscribers", creator))
        if principal is not None:
            pipe.hget(keys.subs_key(shard), keys.state_field(creator, principal.sub))
        results = await pipe.execute()
        if results[0] is not None:
            subscribers = int(results[0])
            if principal is not None:
                viewer = int(results[1] or 0)
    except (RedisError, OSError) as exc:
        log.warning("creator counts from Postgres: Redis unavailable (%s)", exc)
    source = "redis"
    if subscribers is None:  # Redis down, or it holds no live count for this creator
        subscribers, viewer = await _from_postgres(services, creator, principal.sub if principal else None)
        source = "postgres"
    body: dict[str, object] = {"creator_id": creator, "subscribers": subscribers}
    if principal is not None:
        body["viewer_state"] = SUBSCRIPTION_STATES[viewer or 0]
    return json_response(body, headers={"X-Counts-Source": source})


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
    except _PG_ERRORS as exc:
        log.warning("creator counts unavailable: Postgres unreachable too (%s)", exc)
        raise unavailable(services, "Counts are temporarily unavailable.") from None
    return int(subscribers or 0), int(viewer)
