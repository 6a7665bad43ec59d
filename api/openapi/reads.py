"""Spec of api/reads.py: a creator's totals, a user's likes and subscriptions, a creator's subscribers."""

from __future__ import annotations

from api import reads
from api.openapi.components import (
    AUTH_OPTIONAL,
    AUTH_REQUIRED,
    INVALID_TOKEN,
    NOT_FOUND,
    TOKEN_ERRORS,
    Schema,
    ok,
    operation,
    page_schema,
    ref,
)
from daemon.creators import TOTALS
from daemon.settings import Settings
from daemon.trending import TRENDING_MAX, WINDOWS

_AT = {
    "type": "string",
    "format": "date-time",
    "description": "UTC, microseconds: when Postgres got the record.",
}
_PAGE_ERRORS = {
    400: ("invalid_cursor",),
    401: TOKEN_ERRORS,
    404: NOT_FOUND,
    422: ("invalid_limit",),
    503: ("unavailable",),
}
_FRESHNESS = (
    " From Postgres: a like or subscription is listed once the flusher wrote it (within a flush interval). "
    "Newest first; `next_cursor` pages through each record once."
)


def _entry(field: str, at: str) -> Schema:
    return {
        "type": "object",
        "required": [field, at],
        "properties": {field: ref("schemas", "Id"), at: _AT},
        "additionalProperties": False,
    }


def _list(operation_id: str, summary: str, description: str, entry: tuple[str, str]) -> dict[str, Schema]:
    """A list of the caller's own (the token's `sub`)."""
    return {
        "get": operation(
            operation_id,
            summary,
            description=description + _FRESHNESS,
            tags=["reads"],
            security=AUTH_REQUIRED,
            parameters=[ref("parameters", "limit"), ref("parameters", "cursor")],
            responses={200: ok("One page.", page_schema(_entry(*entry)))},
            errors=_PAGE_ERRORS,
        )
    }


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    page = [ref("parameters", "limit"), ref("parameters", "cursor")]
    totals = {
        "type": "object",
        "required": ["creator_id", "subscribers", "content_count", *TOTALS],
        "properties": {
            "creator_id": ref("schemas", "Id"),
            "subscribers": ref("schemas", "Count"),
            "content_count": {
                **ref("schemas", "Count"),
                "description": "Items the registry assigns to the creator.",
            },
            **{name: ref("schemas", "Count") for name in TOTALS},
        },
        "additionalProperties": False,
    }
    trending = {
        "type": "object",
        "required": ["window", "items"],
        "properties": {
            "window": {"enum": list(WINDOWS)},
            "items": {
                "type": "array",
                "maxItems": TRENDING_MAX,
                "items": {
                    "type": "object",
                    "required": ["content_id", "views"],
                    "properties": {"content_id": ref("schemas", "Id"), "views": ref("schemas", "Count")},
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    }
    return {
        reads.TRENDING_ROUTE: {
            "get": operation(
                "getTrending",
                "The items with the most views in a sliding window",
                description="Most views first (ties: by content id). No token needed. Each api process "
                "reuses an answer for ENGAGEMENT_TRENDING_CACHE_MS.",
                tags=["stats"],
                security=AUTH_OPTIONAL,
                parameters=[ref("parameters", "trendingWindow"), ref("parameters", "trendingLimit")],
                responses={200: ok("The window's top items.", trending)},
                errors={
                    401: INVALID_TOKEN,
                    404: NOT_FOUND,
                    422: ("invalid_window", "invalid_limit"),
                    503: ("unavailable",),
                },
            )
        },
        reads.CREATOR_STATS_ROUTE: {
            "get": operation(
                "getCreatorStats",
                "A creator's totals",
                description="The subscriber count and the sums of the counts of every item the content "
                "registry assigns to the creator (an item registered after it was viewed counts in full). "
                "From Postgres: exact once flushed, behind the live counts by at most a flush interval.",
                tags=["stats"],
                security=AUTH_OPTIONAL,
                parameters=[ref("parameters", "creatorId")],
                responses={200: ok("Totals.", totals)},
                errors={
                    401: INVALID_TOKEN,
                    404: NOT_FOUND,
                    422: ("invalid_creator_id",),
                    503: ("unavailable",),
                },
            )
        },
        reads.MY_LIKES_ROUTE: _list(
            "listMyLikes",
            "The items the caller likes",
            "The token's `sub`'s likes (not dislikes).",
            ("content_id", "liked_at"),
        ),
        reads.MY_SUBSCRIPTIONS_ROUTE: _list(
            "listMySubscriptions",
            "The creators the caller subscribes to",
            "The token's `sub`'s subscriptions.",
            ("creator_id", "subscribed_at"),
        ),
        reads.SUBSCRIBERS_ROUTE: {
            "get": operation(
                "listCreatorSubscribers",
                "A creator's subscribers",
                description="Only with the creator's own token (`sub` equal to creatorId) or scope "
                "`internal`." + _FRESHNESS,
                tags=["reads"],
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "creatorId"), *page],
                responses={200: ok("One page.", page_schema(_entry("user_id", "subscribed_at")))},
                errors={
                    **_PAGE_ERRORS,
                    403: ("not_your_creator",),
                    422: ("invalid_creator_id", "invalid_limit"),
                },
            )
        },
    }
