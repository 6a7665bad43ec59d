"""The reusable parts of the OpenAPI document and the helpers the per-area spec modules build with.

An area module (``api/openapi/<area>.py``) describes its operations with ``operation(...)``: the
success responses, and for errors only ``{status: (error codes...)}``. ``operation`` turns each status
into a response whose body is the ``Error`` schema with ``error`` restricted to those codes, and adds
the headers the status always carries (``WWW-Authenticate`` on 401, ``Retry-After`` on 429 and 503).
The codes are the ``ApiError`` codes the code raises; ``tests/test_openapi.py`` checks both ways.
"""

from __future__ import annotations

from typing import Any

from api.pagination import MAX_ID, PAGE_DEFAULT, PAGE_MAX
from api.playlists import ITEMS_PAGE_DEFAULT, ITEMS_PAGE_MAX
from api.purge import USER_ID_MAX_LEN as PURGE_USER_ID_MAX_LEN
from daemon.ids import EVENT_TYPES, ID_CHARS, SESSION_ID_MAX_LEN
from daemon.settings import Settings

Schema = dict[str, Any]

NEXT_CURSOR: Schema = {
    "type": ["string", "null"],
    "description": "Pass it back as `cursor` for the next page; null on the last page.",
}

BEARER = "bearerAuth"
AUTH_REQUIRED: list[dict[str, list[str]]] = [{BEARER: []}]
AUTH_OPTIONAL: list[dict[str, list[str]]] = [{}, {BEARER: []}]
NO_AUTH: list[dict[str, list[str]]] = [{}]


def auth_scope(scope: str) -> list[dict[str, list[str]]]:
    """A bearer token whose ``scope`` claim contains ``scope`` (OpenAPI 3.1 allows role names here)."""
    return [{BEARER: [scope]}]


# 401 codes of api.auth: a token that is sent must be valid; ``require`` also refuses no token at all.
INVALID_TOKEN = ("invalid_token", "token_expired", "token_not_yet_valid", "auth_not_configured")
TOKEN_ERRORS = ("missing_token", *INVALID_TOKEN)
# Starlette's router: a path that matches no route (e.g. an empty or slash-containing id segment).
NOT_FOUND = ("not_found",)
# api.ingest.json_object and BodyReader.read: every small JSON body
JSON_BODY_400 = ("malformed_body", "bad_request")
JSON_BODY_422 = ("invalid_body", "unknown_field")

_STATUS_TEXT = {
    400: "The request is malformed.",
    401: "No valid Bearer token.",
    403: "The token lacks the scope this operation needs.",
    404: "No such resource.",
    406: "None of the answers this resource gives is acceptable (see the description).",
    409: "The request conflicts with the resource's state.",
    413: "The body is too large.",
    415: "Unsupported request media type.",
    422: "The request is well formed but invalid.",
    429: "Rate limited: retry after `Retry-After` seconds.",
    503: "Temporarily unavailable: retry after `Retry-After` seconds.",
}
_STATUS_HEADERS = {
    401: {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    429: {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
    503: {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
}


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def error_response(status: int, codes: tuple[str, ...]) -> Schema:
    """A response whose body is an ``Error`` with ``error`` one of ``codes``."""
    schema = {"allOf": [ref("schemas", "Error"), {"properties": {"error": {"enum": sorted(set(codes))}}}]}
    response: Schema = {
        "description": f"{_STATUS_TEXT[status]} `error`: {', '.join(f'`{c}`' for c in sorted(set(codes)))}.",
        "content": {"application/json": {"schema": schema}},
    }
    if status in _STATUS_HEADERS:
        response["headers"] = dict(_STATUS_HEADERS[status])
    return response


def json_content(schema: Schema) -> dict[str, Schema]:
    return {"application/json": {"schema": schema}}


def ok(description: str, schema: Schema | None = None, headers: dict[str, Schema] | None = None) -> Schema:
    """A success response: a JSON body (``schema``) or none."""
    response: Schema = {"description": description}
    if schema is not None:
        response["content"] = json_content(schema)
    if headers:
        response["headers"] = headers
    return response


def operation(
    operation_id: str,
    summary: str,
    *,
    tags: list[str],
    security: list[dict[str, list[str]]],
    responses: dict[int, Schema],
    errors: dict[int, tuple[str, ...]],
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    description: str | None = None,
) -> Schema:
    """One operation object. ``errors`` maps each error status to the ``error`` codes it can carry."""
    op: Schema = {"operationId": operation_id, "summary": summary, "tags": tags, "security": security}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    merged = {str(status): response for status, response in responses.items()}
    for status, codes in sorted(errors.items()):
        merged[str(status)] = error_response(status, codes)
    op["responses"] = dict(sorted(merged.items()))
    return op


def id_schema(settings: Settings, description: str | None = None) -> Schema:
    """The id syntax of api.ingest (content ids, creator ids, user ids)."""
    return _id(settings.content_id_max_len, description)


def _id(max_len: int, description: str | None = None) -> Schema:
    schema: Schema = {
        "type": "string",
        "minLength": 1,
        "maxLength": max_len,
        "pattern": f"^{ID_CHARS.replace(chr(92), '')}{{1,{max_len}}}$",
    }
    if description:
        schema["description"] = description
    return schema


def session_id_schema() -> Schema:
    schema = _id(SESSION_ID_MAX_LEN, "Playback session; null or absent: none.")
    return {**schema, "type": ["string", "null"]}


def event_type_schema() -> Schema:
    return {
        "enum": [*sorted(EVENT_TYPES), None],
        "description": "Playback signal; null or absent: `media_started` (a view). The others count a "
        "completion, skip or replay instead of a view.",
    }


def watch_seconds_schema(settings: Settings) -> Schema:
    return {
        "type": ["integer", "null"],
        "minimum": 0,
        "maximum": settings.watch_seconds_max,
        "description": "Seconds watched, added to the item's watch time; null or absent: 0. Any "
        "integral number: `30.0` counts as 30.",
    }


def _limit(default: int, maximum: int, what: str = "Entries per page") -> Schema:
    return {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
        "description": f"{what}, 1 to {maximum} (default {default}); otherwise a 422 `invalid_limit`.",
    }


def page_schema(item: Schema) -> Schema:
    """A list page: ``{"items": [...], "next_cursor": str | null}``."""
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": item}, "next_cursor": NEXT_CURSOR},
        "additionalProperties": False,
    }


def components(settings: Settings) -> Schema:
    return {
        "securitySchemes": {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT signed with the configured HS256 secret or RS256 key. The user is "
                f"`sub` (1 to {settings.content_id_max_len} characters, no control characters); scopes "
                "(`ingest`, `internal`) are read from `scope`, a space-separated string or a list.",
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": {"type": "string", "description": "Stable machine-readable code."},
                    "message": {"type": "string", "description": "A sentence for humans."},
                    "index": {"type": "integer", "minimum": 0, "description": "The bad batch item."},
                    "action": {"type": "string", "description": "The rate-limited action (429)."},
                    "retry_after_s": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "As Retry-After (429).",
                    },
                    "position": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Where the item already is (409 `item_exists`).",
                    },
                    "failed_steps": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "The purge steps to run again (503 `purge_incomplete`).",
                    },
                    "user_id": {"type": "string", "description": "The purged user (503 `purge_incomplete`)."},
                    "removed": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 0},
                        "description": "What the steps that ran removed (503 `purge_incomplete`).",
                    },
                },
                "additionalProperties": False,
            },
            "Id": id_schema(settings, "1 to content_id_max_len characters of A-Z a-z 0-9 _ . : -"),
            "Count": {"type": "integer", "minimum": 0},
        },
        "parameters": {
            "contentId": {
                "name": "contentId",
                "in": "path",
                "required": True,
                "schema": ref("schemas", "Id"),
                "description": "The content item.",
            },
            "creatorId": {
                "name": "creatorId",
                "in": "path",
                "required": True,
                "schema": ref("schemas", "Id"),
                "description": "The creator (same syntax as a content id).",
            },
            "accessToken": {
                "name": "access_token",
                "in": "query",
                "required": False,
                "description": "The Bearer token, for clients that cannot send headers (a browser's WebSocket"
                " or EventSource). Proxies may log it: prefer the Authorization header.",
                "schema": {"type": "string", "minLength": 1},
            },
            "commentId": {
                "name": "commentId",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                "description": "A comment of the item.",
            },
            "playlistId": {
                "name": "playlistId",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                "description": "One of the caller's playlists (another user's is a 404, as an unknown one).",
            },
            "userId": {
                "name": "userId",
                "in": "path",
                "required": True,
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": PURGE_USER_ID_MAX_LEN,
                    "pattern": f"^[^\\x00-\\x1f\\x7f]{{1,{PURGE_USER_ID_MAX_LEN}}}$",
                },
                "description": "The user's token `sub`, percent-encoded (no control characters).",
            },
            "parentCommentId": {
                "name": "parent_comment_id",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                "description": "List this top-level comment's replies (oldest first) instead of the "
                "top-level comments (newest first).",
            },
            "limit": _limit(PAGE_DEFAULT, PAGE_MAX),
            "itemsLimit": _limit(ITEMS_PAGE_DEFAULT, ITEMS_PAGE_MAX, "Items per page"),
            "trendingLimit": _limit(20, 100, "Items"),
            "trendingWindow": {
                "name": "window",
                "in": "query",
                "required": False,
                "schema": {"enum": ["1h", "24h", "7d"], "default": "1h"},
                "description": "1h: the last 12 five-minute buckets (55 to 60 minutes); 24h and 7d: the last "
                "24 and 168 hours, the current one included. Otherwise a 422 `invalid_window`.",
            },
            **{
                name: {
                    "name": query,
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                    "description": description,
                }
                for name, query, description in (
                    ("fromDay", "from", "The first UTC day (default: 29 days before `to`)."),
                    ("toDay", "to", "The last UTC day (default: today)."),
                )
            },
            "cursor": {
                "name": "cursor",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "The `next_cursor` of the previous page, as given (opaque). Any other value, "
                "or a cursor of another list, is a 400 `invalid_cursor`.",
            },
            "Idempotency-Key": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {
                    "type": "string",
                    "pattern": "^[\\x21-\\x7e]{1,128}$",
                    "minLength": 1,
                    "maxLength": 128,
                },
                "description": "Makes a retry safe: the same key from the same user on the same target "
                "within ENGAGEMENT_IDEMPOTENCY_TTL_S returns the first answer (`Idempotent-Replayed: true`); "
                "the same key for a different request is a 422 `idempotency_key_reused`.",
            },
        },
        "headers": {
            "Retry-After": {
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
                "description": "Seconds to wait before retrying.",
            },
            "WWW-Authenticate": {
                "required": True,
                "schema": {"type": "string"},
                "description": "The Bearer challenge, naming the problem.",
            },
            "Idempotent-Replayed": {
                "required": False,
                "schema": {"const": "true"},
                "description": "Present when this is the stored first answer to the Idempotency-Key.",
            },
            "X-Counts-Source": {
                "required": True,
                "schema": {"enum": ["redis", "postgres"]},
                "description": "Where the counts come from: Redis live counts, or Postgres when Redis is "
                "unreachable or holds no live count.",
            },
        },
    }
