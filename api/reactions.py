"""Likes and dislikes: POST|DELETE /api/v1/content/{contentId}/like and .../dislike.

One ``set_reaction`` script call per request checks the Idempotency-Key, reads and writes the user's
state, enforces like/dislike mutual exclusion and moves the counts, atomically in the item's slot.
"""

from __future__ import annotations

import re

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.instrument import instrumented
from api.ratelimit import refusal
from api.services import Services
from daemon import keys

LIKE_ROUTE = "/api/v1/content/{contentId}/like"
DISLIKE_ROUTE = "/api/v1/content/{contentId}/dislike"

STATE_NAMES = {1: "liked", -1: "disliked", 0: "none"}
_ACTIONS = {
    (LIKE_ROUTE, "POST"): "like",
    (LIKE_ROUTE, "DELETE"): "unlike",
    (DISLIKE_ROUTE, "POST"): "dislike",
    (DISLIKE_ROUTE, "DELETE"): "undislike",
}
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII, no spaces


def idempotency_key(request: Request) -> str:
    """The request's Idempotency-Key, or "" when it has none."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return ""
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 128 visible ASCII characters."
        )
    return key


async def set_reaction(services: Services, content_id: str, user_id: str, action: str, key: str) -> dict:
    shard = keys.shard_of(content_id, services.settings.shards)
    idem = keys.idem_key(shard, content_id, user_id, key) if key else keys.idem_key(shard, "-", "-", "-")
    status, state, likes, dislikes = await services.scripts.set_reaction(
        services.redis,
        [keys.live_key(shard), keys.delta_key(shard), keys.state_key(shard), keys.sdelta_key(shard), idem],
        [content_id, user_id, action, services.settings.idempotency_ttl_s, action if key else ""],
    )
    if status == "conflict":
        raise ApiError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used for a different request on this item.",
        )
    return {
        "status": status,
        "body": {"state": STATE_NAMES[int(state)], "likes": int(likes), "dislikes": int(dislikes)},
    }


async def check_rate(services: Services, action: str, user_id: str, request_id: str | None) -> None:
    """429 past the user's limit for ``action``. Fails open: a Redis error lets the request through
    (counted), since the limit guards against abuse while correctness never depends on it."""
    limit = services.limits.get(action)
    if limit is None or services.limiter is None:
        return
    try:
        decision = await services.limiter.check(user_id, limit, request_id=request_id)
    except (RedisError, OSError):
        services.metrics.rate_limit_errors.labels(action=action).inc()
        return
    if not decision.allowed:
        services.metrics.rate_limited.labels(action=action).inc()
        raise refusal(decision)


def _endpoint(route: str, method: str):  # type: ignore[no-untyped-def]
    action = _ACTIONS[(route, method)]

    async def react(request: Request) -> Response:
        services: Services = request.app.state.services
        principal = services.auth.require(request.headers.get("authorization"))
        content_id = services.bodies.content_id(request.path_params["contentId"])
        key = idempotency_key(request)
        await check_rate(
            services,
            "like" if action in ("like", "unlike") else "dislike",
            principal.sub,
            f"{content_id}|{key}" if key else None,
        )
        result = await set_reaction(services, content_id, principal.sub, action, key)
        if result["status"] == "changed" and services.events is not None:
            # media_liked / media_disliked; a removal emits nothing (seed 003 has no such event)
            services.events.reaction(principal.sub, content_id, result["body"]["state"])
        headers = {"Idempotent-Replayed": "true"} if result["status"] == "replayed" else None
        return json_response(result["body"], headers=headers)

    react.__name__ = f"{action}_content"
    return instrumented(route)(react)


like = _endpoint(LIKE_ROUTE, "POST")
unlike = _endpoint(LIKE_ROUTE, "DELETE")
dislike = _endpoint(DISLIKE_ROUTE, "POST")
undislike = _endpoint(DISLIKE_ROUTE, "DELETE")
