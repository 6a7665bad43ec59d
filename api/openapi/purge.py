"""Spec of api/purge.py: the GDPR purge of a user (scope `internal`)."""

from __future__ import annotations

from api import purge
from api.openapi.components import NOT_FOUND, TOKEN_ERRORS, Schema, auth_scope, ok, operation, ref
from daemon.purge import STEPS
from daemon.settings import Settings


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    removed = {
        "type": "object",
        "description": "Records removed, per kind (`likes`, `dislikes`, `subscriptions`, `comments`, "
        "`watch_history`, `shares`, `playlists`, `idempotency_records`).",
        "additionalProperties": ref("schemas", "Count"),
    }
    summary = {
        "type": "object",
        "required": ["user_id", "removed"],
        "properties": {"user_id": {"type": "string"}, "removed": removed},
        "additionalProperties": False,
    }
    steps = ", ".join(f"`{name}`" for name, _ in STEPS)
    return {
        purge.PURGE_ROUTE: {
            "delete": operation(
                "purgeUser",
                "Remove every engagement record of a user (GDPR; scope `internal`)",
                description="Likes, dislikes, subscriptions, comments (anonymised), shares, watch history, "
                "playlists and the records that name the user, in Postgres and Redis. Idempotent: repeat "
                "it after a failure (a second run removes nothing). The live counts exclude the user "
                "at once; `content_counters` / `creator_counters` at the next flush (hence 202). 503 "
                f"`purge_incomplete`: a step ({steps}) failed; the body adds `failed_steps`, `user_id` and "
                "`removed`. 503 `unavailable`: Postgres is unreachable, nothing ran.",
                tags=["internal"],
                security=auth_scope("internal"),
                parameters=[ref("parameters", "userId")],
                responses={202: ok("Purged: what was removed.", summary)},
                errors={
                    401: TOKEN_ERRORS,
                    403: ("insufficient_scope",),
                    404: NOT_FOUND,
                    422: ("invalid_user_id",),
                    503: ("unavailable", "purge_incomplete"),
                },
            )
        }
    }
