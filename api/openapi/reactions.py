"""Spec of api/reactions.py: likes and dislikes."""

from __future__ import annotations

from api import reactions
from api.openapi.components import (
    AUTH_REQUIRED,
    NOT_FOUND,
    TOKEN_ERRORS,
    Schema,
    ok,
    operation,
    ref,
)
from daemon.ids import STATE_NAMES
from daemon.settings import Settings

TAGS = ["likes"]

_ANSWER = {
    "type": "object",
    "required": ["state", "likes", "dislikes"],
    "properties": {
        "state": {"enum": sorted(STATE_NAMES.values())},
        "likes": ref("schemas", "Count"),
        "dislikes": ref("schemas", "Count"),
    },
    "additionalProperties": False,
}
_SUMMARIES = {
    "like": "Like a content item (switches a dislike)",
    "unlike": "Take a like back",
    "dislike": "Dislike a content item (switches a like)",
    "undislike": "Take a dislike back",
}


def _reaction(endpoint: reactions.ReactionEndpoint) -> Schema:
    return operation(
        f"{endpoint.action}Content",
        _SUMMARIES[endpoint.action],
        description="The user is the token's `sub`. Repeating the current state, or removing a state the "
        "user does not hold, changes nothing and answers the same. Rate-limited as "
        f"`{endpoint.limit_action}`. While Redis is unreachable the change is written to Postgres; 503 "
        "`unavailable` when Postgres is unreachable too (or Redis no longer holds the user's state and "
        "Postgres cannot be read). 503 `redis_memory_full`: Redis is at maxmemory with only changes not "
        "yet in Postgres; retry after `Retry-After`.",
        tags=TAGS,
        security=AUTH_REQUIRED,
        parameters=[ref("parameters", "contentId"), ref("parameters", "Idempotency-Key")],
        responses={
            200: ok(
                "The user's state and the item's counts.",
                _ANSWER,
                {"Idempotent-Replayed": ref("headers", "Idempotent-Replayed")},
            )
        },
        errors={
            400: ("invalid_idempotency_key",),
            401: TOKEN_ERRORS,
            404: NOT_FOUND,
            422: ("invalid_content_id", "idempotency_key_reused"),
            429: ("rate_limited",),
            503: ("unavailable", "redis_memory_full"),
        },
    )


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    return {
        reactions.LIKE_ROUTE: {"post": _reaction(reactions.like), "delete": _reaction(reactions.unlike)},
        reactions.DISLIKE_ROUTE: {
            "post": _reaction(reactions.dislike),
            "delete": _reaction(reactions.undislike),
        },
    }
