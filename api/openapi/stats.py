"""Spec of api/stats.py: an item's counts."""

from __future__ import annotations

from api import stats
from api.openapi.components import AUTH_OPTIONAL, INVALID_TOKEN, NOT_FOUND, Schema, ok, operation, ref
from daemon.ids import STATE_NAMES
from daemon.settings import Settings


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    counts = {field: ref("schemas", "Count") for field in stats.STAT_FIELDS}
    uniques = {
        field: {
            "type": "integer",
            "minimum": 0,
            "description": "HyperLogLog estimate of the distinct users who viewed the item (all time, or "
            "this UTC day): standard error 0.81%, exact for small counts.",
        }
        for field in stats.UNIQUE_FIELDS
    }
    body = {
        "type": "object",
        "required": ["content_id", *stats.STAT_FIELDS, *stats.UNIQUE_FIELDS],
        "properties": {
            "content_id": ref("schemas", "Id"),
            **counts,
            **uniques,
            "viewer_state": {
                "enum": sorted(STATE_NAMES.values()),
                "description": "The caller's like state; only when a token is sent.",
            },
        },
        "additionalProperties": False,
    }
    return {
        stats.STATS_ROUTE: {
            "get": operation(
                "getContentStats",
                "An item's counts",
                description="No token needed; with one, the answer adds the caller's `viewer_state`. Counts "
                "come from Redis, or from Postgres when Redis is unreachable or holds no live counts.",
                tags=["stats"],
                security=AUTH_OPTIONAL,
                parameters=[ref("parameters", "contentId")],
                responses={200: ok("Counts.", body, {"X-Counts-Source": ref("headers", "X-Counts-Source")})},
                errors={
                    401: INVALID_TOKEN,
                    404: NOT_FOUND,
                    422: ("invalid_content_id",),
                    503: ("unavailable",),
                },
            )
        }
    }
