"""Spec of api/subscriptions.py: creator subscriptions and a creator's count."""

from __future__ import annotations

from api import subscriptions
from api.openapi.components import (
    AUTH_OPTIONAL,
    AUTH_REQUIRED,
    INVALID_TOKEN,
    NOT_FOUND,
    TOKEN_ERRORS,
    Schema,
    ok,
    operation,
    ref,
)
from daemon.ids import SUBSCRIPTION_STATES
from daemon.settings import Settings

TAGS = ["subscriptions"]
_STATES = sorted(SUBSCRIPTION_STATES.values())


def _change(action: str) -> Schema:
    answer = {
        "type": "object",
        "required": ["creator_id", "state", "subscribers"],
        "properties": {
            "creator_id": ref("schemas", "Id"),
            "state": {"enum": _STATES},
            "subscribers": ref("schemas", "Count"),
        },
        "additionalProperties": False,
    }
    codes_422 = ("invalid_creator_id", "idempotency_key_reused")
    if action == "subscribe":
        codes_422 = (*codes_422, "self_subscription")
    return operation(
        f"{action}Creator",
        "Subscribe to a creator" if action == "subscribe" else "Unsubscribe from a creator",
        description="The user is the token's `sub`. Repeating the current state changes nothing and answers "
        "the same. Rate-limited as `subscribe`. While Redis is unreachable the change is written to "
        "Postgres; 503 `unavailable` when Postgres is unreachable too. 503 `redis_memory_full`: Redis is "
        "at maxmemory with only changes not yet in Postgres; retry after `Retry-After`.",
        tags=TAGS,
        security=AUTH_REQUIRED,
        parameters=[ref("parameters", "creatorId"), ref("parameters", "Idempotency-Key")],
        responses={
            200: ok(
                "The subscription's state and the creator's count.",
                answer,
                {"Idempotent-Replayed": ref("headers", "Idempotent-Replayed")},
            )
        },
        errors={
            400: ("invalid_idempotency_key",),
            401: TOKEN_ERRORS,
            404: NOT_FOUND,
            422: codes_422,
            429: ("rate_limited",),
            503: ("unavailable", "redis_memory_full"),
        },
    )


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    creator = {
        "type": "object",
        "required": ["creator_id", "subscribers"],
        "properties": {
            "creator_id": ref("schemas", "Id"),
            "subscribers": ref("schemas", "Count"),
            "viewer_state": {"enum": _STATES, "description": "The caller's subscription; only with a token."},
        },
        "additionalProperties": False,
    }
    return {
        subscriptions.SUBSCRIBE_ROUTE: {"post": _change("subscribe"), "delete": _change("unsubscribe")},
        subscriptions.CREATOR_ROUTE: {
            "get": operation(
                "getCreator",
                "A creator's subscriber count",
                description="No token needed; with one, the answer adds the caller's `viewer_state`.",
                tags=TAGS,
                security=AUTH_OPTIONAL,
                parameters=[ref("parameters", "creatorId")],
                responses={
                    200: ok("The count.", creator, {"X-Counts-Source": ref("headers", "X-Counts-Source")})
                },
                errors={
                    401: INVALID_TOKEN,
                    404: NOT_FOUND,
                    422: ("invalid_creator_id",),
                    503: ("unavailable",),
                },
            )
        },
    }
