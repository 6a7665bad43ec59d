"""Spec of api/shares.py: one share."""

from __future__ import annotations

from api import shares
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
    ref,
)
from daemon.settings import Settings


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    body = {
        "type": "object",
        "required": ["platform"],
        "properties": {
            "platform": {
                "type": "string",
                "pattern": f"^{shares.PLATFORM_PATTERN}$",
                "minLength": 1,
                "maxLength": 32,
            },
            "external": {"type": "boolean", "default": False},
        },
        "additionalProperties": False,
    }
    answer = {
        "type": "object",
        "required": ["share_id", "content_id", "platform", "external", "shares"],
        "properties": {
            "share_id": {"type": "integer", "minimum": 1},
            "content_id": ref("schemas", "Id"),
            "platform": body["properties"]["platform"],
            "external": {"type": "boolean"},
            "shares": {**ref("schemas", "Count"), "description": "The item's live share count."},
        },
        "additionalProperties": False,
    }
    return {
        shares.SHARES_ROUTE: {
            "post": operation(
                "shareContent",
                "Record one share of a content item",
                description="The user is the token's `sub`. Rate-limited as `share`. With an "
                "Idempotency-Key, a retry gets the first answer and adds no row and no count. 503 "
                "`unavailable`: Redis or Postgres is unreachable and the share is not recorded; 503 "
                "`redis_memory_full`: Redis is at maxmemory with only changes not yet in Postgres. At most "
                f"{settings.body_max_bytes} bytes of body.",
                tags=["shares"],
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "contentId"), ref("parameters", "Idempotency-Key")],
                body={"required": True, "content": json_content(body)},
                responses={
                    201: ok(
                        "The share recorded.",
                        answer,
                        {"Idempotent-Replayed": ref("headers", "Idempotent-Replayed")},
                    )
                },
                errors={
                    400: (*JSON_BODY_400, "invalid_idempotency_key"),
                    401: TOKEN_ERRORS,
                    404: NOT_FOUND,
                    413: ("body_too_large",),
                    422: (
                        "invalid_content_id",
                        *JSON_BODY_422,
                        "invalid_platform",
                        "invalid_external",
                        "idempotency_key_reused",
                    ),
                    429: ("rate_limited",),
                    503: ("unavailable", "redis_memory_full"),
                },
            )
        }
    }
