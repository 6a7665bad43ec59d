"""Likes and dislikes: POST|DELETE /api/v1/content/{contentId}/like and .../dislike.

One ``set_reaction`` script call per request checks the user's rate limit, the Idempotency-Key, reads
and writes the user's state, enforces like/dislike mutual exclusion and moves the counts, atomically. On
Redis Cluster the rate limit (the user's slot) is a call of its own before it (the item's slot).
"""

from __future__ import annotations

from time import perf_counter

import orjson
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from api.errors import api_error
from api.idempotency import REPLAYED_HEADER, checked_idempotency_key
from api.services import Services
from daemon.errors import DomainError
from daemon.pipeliner import pipeliner_for
from daemon.ratelimit import refusal
from daemon.reactions import set_reaction

LIKE_ROUTE = "/api/v1/content/{contentId}/like"
DISLIKE_ROUTE = "/api/v1/content/{contentId}/dislike"

_ACTIONS = {
    (LIKE_ROUTE, "POST"): "like",
    (LIKE_ROUTE, "DELETE"): "unlike",
    (DISLIKE_ROUTE, "POST"): "dislike",
    (DISLIKE_ROUTE, "DELETE"): "undislike",
}


async def check_rate(services: Services, action: str, user_id: str, request_id: str | None) -> None:
    """429 past the user's limit for ``action``. Fails open: a Redis error lets the request through
    (counted), since the limit guards against abuse while correctness never depends on it."""
    limit = services.limits.get(action)
    if limit is None or services.limiter is None:
        return
    try:
        # through the process's pipeliner: concurrent requests' checks share round trips
        decision = await services.limiter.check(user_id, limit, request_id, pipeliner_for(services))
    except (RedisError, OSError):
        services.metrics.rate_limit_errors.labels(action=action).inc()
        return
    if not decision.allowed:
        services.metrics.rate_limited.labels(action=action).inc()
        raise refusal(decision)


_JSON_TYPE = (b"content-type", b"application/json")


class ReactionEndpoint:
    """One of POST|DELETE .../like and .../dislike, as a raw ASGI endpoint (like views.SingleView).

    It reads the two headers it needs straight from the scope, answers with prebuilt headers and an
    orjson body, and records its metrics inline. Errors are the same responses as everywhere (api.errors).
    """

    def __init__(self, route: str, method: str) -> None:
        self.route = route
        self.method = method
        self.action = _ACTIONS[(route, method)]
        self.limit_action = "like" if self.action in ("like", "unlike") else "dislike"
        self.__name__ = f"{self.action}_content"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        services: Services = scope["app"].state.services
        authorization = key = None
        for name, value in scope["headers"]:  # the first of repeated headers, as Request.headers.get
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"idempotency-key" and key is None:
                key = value.decode("latin-1")
        try:
            principal = services.auth.require(authorization)
            content_id = services.bodies.content_id(scope["path_params"]["contentId"])
            key = checked_idempotency_key(key)
            request_id = f"{content_id}|{key}" if key else None
            limit = services.limits.get(self.limit_action)
            checked = None
            if limit is not None and services.limiter is not None:
                if services.settings.redis_cluster:  # the user's slot is not the item's: two calls
                    await check_rate(services, self.limit_action, principal.sub, request_id)
                else:  # one script call checks the limit, then sets the reaction
                    checked = (limit, services.limiter.check_with(limit, request_id))
            pipeliner = pipeliner_for(services)
            result = await set_reaction(
                services, content_id, principal.sub, self.action, key, pipeliner, checked
            )
        except DomainError as exc:
            error = api_error(exc)
            await error.response()(scope, receive, send)
            services.metrics.requests.observe(self.route, self.method, error.status, perf_counter() - started)
            return
        status = result["status"]
        if status == "changed" and services.events is not None:
            # media_liked / media_disliked; a removal emits nothing (seed 003 has no such event)
            services.events.reaction(principal.sub, content_id, result["body"]["state"])
        body = orjson.dumps(result["body"])
        headers = [(b"content-length", b"%d" % len(body)), _JSON_TYPE]
        if status == "replayed":
            headers.append(REPLAYED_HEADER)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        services.metrics.requests.observe(self.route, self.method, 200, perf_counter() - started)


like = ReactionEndpoint(LIKE_ROUTE, "POST")
unlike = ReactionEndpoint(LIKE_ROUTE, "DELETE")
dislike = ReactionEndpoint(DISLIKE_ROUTE, "POST")
undislike = ReactionEndpoint(DISLIKE_ROUTE, "DELETE")
