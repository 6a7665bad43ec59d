"""Spec of api/history.py: watch history (the caller's own, the token's `sub`)."""

from __future__ import annotations

from api import history
from api.openapi.components import (
    AUTH_REQUIRED,
    JSON_BODY_400,
    JSON_BODY_422,
    NOT_FOUND,
    TOKEN_ERRORS,
    Schema,
    json_content,
    ok,
    operation,
    page_schema,
    ref,
)
from daemon.history import POSITION_MAX
from daemon.settings import Settings

TAGS = ["history"]


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    progress = {"type": "number", "minimum": 0, "maximum": 100}
    position = {"type": "integer", "minimum": 0, "maximum": POSITION_MAX}
    heartbeat = {
        "type": "object",
        "required": ["progress_pct", "position_seconds"],
        "properties": {
            "progress_pct": {**progress, "description": "Kept to 2 decimals."},
            "position_seconds": {**position, "description": "Any integral number: `30.0` is 30."},
        },
        "additionalProperties": False,
    }
    entry = {
        "type": "object",
        "required": ["content_id", "progress_pct", "position_seconds", "last_watched_at"],
        "properties": {
            "content_id": ref("schemas", "Id"),
            "progress_pct": progress,
            "position_seconds": position,
            "last_watched_at": {
                "type": "string",
                "format": "date-time",
                "description": "UTC, microseconds; Redis' clock (Postgres' while Redis is unreachable).",
            },
        },
        "additionalProperties": False,
    }
    unavailable = "503 `unavailable`:"
    return {
        history.ENTRY_ROUTE: {
            "put": operation(
                "putHistoryEntry",
                "Record a watch-position heartbeat",
                description="The user is the token's `sub`. Rate-limited as `history`. Heartbeats of one "
                "item coalesce in Redis (the last wins) and the flusher writes one row per pass; while "
                f"Redis is unreachable the heartbeat is written to Postgres. {unavailable} both are "
                f"unreachable. At most {settings.body_max_bytes} bytes of body.",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "contentId")],
                body={"required": True, "content": json_content(heartbeat)},
                responses={
                    200: {
                        **ok("The entry as stored.", entry),
                        "links": {
                            "getIt": {
                                "operationId": "getHistoryEntry",
                                "parameters": {"contentId": "$response.body#/content_id"},
                            }
                        },
                    }
                },
                errors={
                    400: JSON_BODY_400,
                    401: TOKEN_ERRORS,
                    404: NOT_FOUND,
                    413: ("body_too_large",),
                    422: (
                        "invalid_content_id",
                        *JSON_BODY_422,
                        "invalid_progress_pct",
                        "invalid_position_seconds",
                    ),
                    429: ("rate_limited",),
                    503: ("unavailable",),
                },
            ),
            "get": operation(
                "getHistoryEntry",
                "The resume position of one item",
                description="The unflushed entry in Redis, else the Postgres row; 404 "
                f"`history_entry_not_found` when there is none. {unavailable} Redis does not hold it and "
                "Postgres is unreachable.",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "contentId")],
                responses={200: ok("The entry.", entry)},
                errors={
                    401: TOKEN_ERRORS,
                    404: (*NOT_FOUND, "history_entry_not_found"),
                    422: ("invalid_content_id",),
                    503: ("unavailable",),
                },
            ),
        },
        history.HISTORY_ROUTE: {
            "get": operation(
                "listHistory",
                "The caller's watch history, most recently watched first",
                description="Unflushed entries merged with the Postgres rows (the newer wins), ties by "
                "`content_id`. While Redis is unreachable, from Postgres only. "
                f"{unavailable} Postgres is unreachable.",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "limit"), ref("parameters", "cursor")],
                responses={200: ok("One page.", page_schema(entry))},
                errors={
                    400: ("invalid_cursor",),
                    401: TOKEN_ERRORS,
                    422: ("invalid_limit",),
                    503: ("unavailable",),
                },
            ),
            "delete": operation(
                "clearHistory",
                "Clear the caller's watch history",
                description="Removes every entry, in Redis (also the heartbeats waiting for the flusher) "
                "and Postgres; idempotent. Rate-limited as `history`. "
                f"{unavailable} Redis or Postgres is unreachable; nothing is cleared when Postgres is.",
                tags=TAGS,
                security=AUTH_REQUIRED,
                responses={204: ok("Cleared (empty body).")},
                errors={401: TOKEN_ERRORS, 429: ("rate_limited",), 503: ("unavailable",)},
            ),
        },
    }
