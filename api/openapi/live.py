"""Spec of api/live.py and api/live_page.py: the live count streams and the page that shows one.

OpenAPI 3.1 has no WebSocket operation: each stream is documented as its Server-Sent Events form, and
its description says how the WebSocket form (the same URL, the same messages) differs."""

from __future__ import annotations

from api import live, live_page
from api.openapi.components import (
    AUTH_OPTIONAL,
    AUTH_REQUIRED,
    INVALID_TOKEN,
    NOT_FOUND,
    TOKEN_ERRORS,
    Schema,
    operation,
    ref,
)
from daemon.settings import Settings

_STREAM = (
    " Send `Accept: text/event-stream` for Server-Sent Events (`data: <JSON>` per message, a `: keepalive`"
    " comment when idle, the stream ends when the server stops), or open the same URL as a WebSocket (one"
    " text frame per message; when idle a keepalive `{{'ts': ...}}` in JSON, nothing changed up to then;"
    " close code 1001 when the server stops). First message: the current counts; then one each time they"
    " change, at most one per ENGAGEMENT_LIVE_INTERVAL_MS ({interval} ms here). Every message has `ts`,"
    " the server time of the read. A client that does not read for ENGAGEMENT_LIVE_SEND_TIMEOUT_S is"
    " dropped. Refusals come before the upgrade, as JSON errors (id, then token, then transport: 406"
    " without an upgrade or `Accept: text/event-stream`); 503 `too_many_connections` past"
    " ENGAGEMENT_LIVE_MAX_CONNECTIONS ({max_connections}) per process."
)


def _events(what: str) -> Schema:
    return {
        "description": f"A stream of {what}: `data: <JSON object>` events.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }


def _errors(own: dict[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    """A stream's refusals: its own, and those every stream shares."""
    return {404: NOT_FOUND, 406: ("not_acceptable",), 503: ("too_many_connections", "unavailable"), **own}


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    stream = _STREAM.format(interval=settings.live_interval_ms, max_connections=settings.live_max_connections)
    return {
        live.CONTENT_LIVE_ROUTE: {
            "get": operation(
                "watchContentCounts",
                "An item's counts, pushed as they change (SSE or WebSocket)",
                description="The message is the body of `GET /api/v1/content/{contentId}/stats` (without"
                " `viewer_state`) plus `ts`. No token needed." + stream,
                tags=["stats"],
                security=AUTH_OPTIONAL,
                parameters=[ref("parameters", "contentId"), ref("parameters", "accessToken")],
                responses={200: _events("the item's counts")},
                errors=_errors({401: INVALID_TOKEN, 422: ("invalid_content_id",)}),
            )
        },
        live.CREATOR_LIVE_ROUTE: {
            "get": operation(
                "watchCreatorCounts",
                "A creator's totals, pushed as they change (SSE or WebSocket)",
                description="The message is the body of `GET /api/v1/creators/{creatorId}/stats` plus `ts`"
                " (from Postgres: it moves when the flusher writes). Only the creator's own token (`sub`"
                " equal to creatorId) or scope `internal`, as a header or `access_token`." + stream,
                tags=["stats"],
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "creatorId"), ref("parameters", "accessToken")],
                responses={200: _events("the creator's totals")},
                errors=_errors({401: TOKEN_ERRORS, 403: ("not_your_creator",), 422: ("invalid_creator_id",)}),
            )
        },
        live_page.PAGE_ROUTE: {
            "get": operation(
                "liveCountsPage",
                "A page showing an item's live counts",
                description="HTML for a person: the item's counts, updated as they change (WebSocket;"
                " `?transport=sse`: Server-Sent Events).",
                tags=["operations"],
                security=[{}],
                parameters=[ref("parameters", "contentId")],
                responses={
                    200: {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                errors={404: NOT_FOUND, 422: ("invalid_content_id",)},
            )
        },
    }
