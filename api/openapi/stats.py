"""Spec of api/stats.py: the counts of one item, and of a batch of items."""

from __future__ import annotations

from api import stats
from api.openapi.components import (
    AUTH_OPTIONAL,
    INVALID_TOKEN,
    JSON_BODY_400,
    JSON_BODY_422,
    NOT_FOUND,
    Schema,
    json_content,
    ok,
    operation,
    ref,
)
from daemon.ids import STATE_NAMES
from daemon.settings import Settings

_FIELD_NOTES = {
    "watch_seconds": "Seconds of watch time reported with views and playback signals.",
    "completions": "media_completed signals.",
    "skips": "media_skipped signals.",
    "replays": "media_replay signals.",
}


def item_schema() -> Schema:
    counts = {
        field: {
            **ref("schemas", "Count"),
            **({"description": _FIELD_NOTES[field]} if field in _FIELD_NOTES else {}),
        }
        for field in stats.STAT_FIELDS
    }
    uniques = {
        field: {
            "type": "integer",
            "minimum": 0,
            "description": "HyperLogLog estimate of the distinct users who viewed the item (all time, or "
            "this UTC day): standard error 0.81%, exact for small counts.",
        }
        for field in stats.UNIQUE_FIELDS
    }
    return {
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


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    item = item_schema()
    request = {
        "type": "object",
        "required": ["content_ids"],
        "properties": {
            "content_ids": {
                "type": "array",
                "items": ref("schemas", "Id"),
                "minItems": 1,
                "maxItems": stats.STATS_BATCH_MAX,
                "description": "Repeats allowed: each is answered in its place.",
            }
        },
        "additionalProperties": False,
    }
    batch = {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": item}},
        "additionalProperties": False,
    }
    day = {
        "type": "object",
        "required": ["date", "views", "unique_viewers", "watch_seconds"],
        "properties": {
            "date": {"type": "string", "format": "date"},
            "views": ref("schemas", "Count"),
            "unique_viewers": {"type": "integer", "minimum": 0, "description": "HyperLogLog estimate."},
            "watch_seconds": ref("schemas", "Count"),
        },
        "additionalProperties": False,
    }
    daily = {
        "type": "object",
        "required": ["content_id", "days"],
        "properties": {
            "content_id": ref("schemas", "Id"),
            "days": {"type": "array", "items": day, "maxItems": stats.MAX_DAYS},
        },
        "additionalProperties": False,
    }
    return {
        stats.DAILY_STATS_ROUTE: {
            "get": operation(
                "getContentDailyStats",
                "An item's views, unique viewers and watch seconds per UTC day",
                description=f"One entry per day of the range (at most {stats.MAX_DAYS} days), zeros where "
                "nothing happened. Views and watch seconds count on the day their api process drained "
                "them; today's entry includes what Redis still holds. No token needed.",
                tags=["stats"],
                security=AUTH_OPTIONAL,
                parameters=[
                    ref("parameters", "contentId"),
                    ref("parameters", "fromDay"),
                    ref("parameters", "toDay"),
                ],
                responses={200: ok("One entry per day.", daily)},
                errors={
                    401: INVALID_TOKEN,
                    404: NOT_FOUND,
                    422: ("invalid_content_id", "invalid_date", "invalid_date_range"),
                    503: ("unavailable",),
                },
            )
        },
        stats.STATS_ROUTE: {
            "get": operation(
                "getContentStats",
                "An item's counts",
                description="No token needed; with one, the answer adds the caller's `viewer_state`. Counts "
                "come from Redis, or from Postgres when Redis is unreachable or holds no live counts.",
                tags=["stats"],
                security=AUTH_OPTIONAL,
                parameters=[ref("parameters", "contentId")],
                responses={200: ok("Counts.", item, {"X-Counts-Source": ref("headers", "X-Counts-Source")})},
                errors={
                    401: INVALID_TOKEN,
                    404: NOT_FOUND,
                    422: ("invalid_content_id",),
                    503: ("unavailable",),
                },
            )
        },
        stats.BATCH_STATS_ROUTE: {
            "post": operation(
                "getContentStatsBatch",
                "The counts of many items",
                description=f"1 to {stats.STATS_BATCH_MAX} content ids; the items answer in request order, "
                "each as `getContentStats` answers it (an unknown item: zeros). No token needed; with one, "
                "each item adds the caller's `viewer_state`. One Redis round trip for all of them, and "
                "one Postgres query for those Redis does not hold.",
                tags=["stats"],
                security=AUTH_OPTIONAL,
                body={"required": True, "content": json_content(request)},
                responses={200: ok("Counts, in request order.", batch)},
                errors={
                    400: JSON_BODY_400,
                    401: INVALID_TOKEN,
                    404: NOT_FOUND,
                    413: ("body_too_large",),
                    422: (
                        *JSON_BODY_422,
                        "invalid_content_ids",
                        "too_many_content_ids",
                        "invalid_content_id",
                    ),
                    503: ("unavailable",),
                },
            )
        },
    }
