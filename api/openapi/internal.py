"""Spec of api/internal.py: the content registry (scope `internal`)."""

from __future__ import annotations

from api import internal
from api.openapi.components import (
    JSON_BODY_400,
    JSON_BODY_422,
    NOT_FOUND,
    TOKEN_ERRORS,
    Schema,
    auth_scope,
    json_content,
    ok,
    operation,
    ref,
)
from daemon.settings import Settings


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    properties = {"creator_id": ref("schemas", "Id"), "content_type": {"enum": list(internal.CONTENT_TYPES)}}
    assert properties.keys() == internal.REGISTRY_FIELDS
    body = {
        "type": "object",
        "required": sorted(internal.REGISTRY_FIELDS),
        "properties": properties,
        "additionalProperties": False,
    }
    record = {
        "type": "object",
        "required": ["content_id", "creator_id", "content_type", "updated_at"],
        "properties": {
            "content_id": ref("schemas", "Id"),
            **properties,
            "updated_at": {"type": "string", "format": "date-time"},
        },
        "additionalProperties": False,
    }
    return {
        internal.REGISTRY_ROUTE: {
            "put": operation(
                "putContent",
                "Register a content item's creator and type (scope `internal`)",
                description="Replaces the record; idempotent. Events read it to fill `creator_id` and "
                "`content_type`. 503 `unavailable`: Postgres or Redis is unreachable; retry. At most "
                f"{settings.body_max_bytes} bytes of body.",
                tags=["internal"],
                security=auth_scope("internal"),
                parameters=[ref("parameters", "contentId")],
                body={"required": True, "content": json_content(body)},
                responses={200: ok("The stored record.", record)},
                errors={
                    400: JSON_BODY_400,
                    401: TOKEN_ERRORS,
                    403: ("insufficient_scope",),
                    404: NOT_FOUND,
                    413: ("body_too_large",),
                    422: ("invalid_content_id", *JSON_BODY_422, "invalid_creator_id", "invalid_content_type"),
                    503: ("unavailable",),
                },
            )
        }
    }
