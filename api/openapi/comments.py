"""Spec of api/comments.py: comments and replies."""

from __future__ import annotations

from api import comments
from api.openapi.components import (
    AUTH_OPTIONAL,
    AUTH_REQUIRED,
    INVALID_TOKEN,
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
from api.pagination import MAX_ID
from daemon.settings import Settings

TAGS = ["comments"]
_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}


def trimmed_text(min_chars: int, max_chars: int, extra_excluded: str = "") -> str:
    """A pattern for text whose ``str.strip()`` is ``min_chars`` (0 or 1) to ``max_chars`` characters,
    none of them in ``extra_excluded`` (a character-class fragment). Python's ``\\s`` (the generator's
    and the validator's) is exactly the whitespace ``str.strip()`` removes."""
    edge = f"[^\\s{extra_excluded}]"
    inner = f"[^{extra_excluded}]" if extra_excluded else "[\\s\\S]"
    core = edge if max_chars < 2 else f"{edge}(?:{inner}{{0,{max_chars - 2}}}{edge})?"
    if min_chars == 0:
        core = f"(?:{core})?"
    return f"^\\s*{core}\\s*$"


def comment_schema(settings: Settings) -> Schema:
    return {
        "type": "object",
        "required": [
            "comment_id",
            "content_id",
            "user_id",
            "parent_comment_id",
            "body",
            "created_at",
            "reply_count",
            "deleted",
        ],
        "properties": {
            "comment_id": _ID,
            "content_id": ref("schemas", "Id"),
            "user_id": {"type": ["string", "null"], "description": "The author; null once deleted."},
            "parent_comment_id": {
                **_ID,
                "type": ["integer", "null"],
                "description": "The thread's top-level comment; null for a top-level comment.",
            },
            "body": {"type": ["string", "null"], "description": "The trimmed text; null once deleted."},
            "created_at": {"type": "string", "format": "date-time"},
            "reply_count": {**ref("schemas", "Count"), "description": "Replies not deleted."},
            "deleted": {"type": "boolean"},
        },
        "additionalProperties": False,
    }


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    max_chars = settings.comment_max_chars
    body = {
        "type": "object",
        "required": ["body"],
        "properties": {
            "body": {
                "type": "string",
                "pattern": trimmed_text(1, max_chars, "\\x00"),
                "description": f"Trimmed (Unicode whitespace), 1 to {max_chars} characters, no NUL.",
            },
            "parent_comment_id": {
                **_ID,
                "type": ["integer", "null"],
                "description": "Reply to this comment of the item (a reply to a reply joins its thread).",
            },
        },
        "additionalProperties": False,
    }
    comment = comment_schema(settings)
    return {
        comments.COMMENTS_ROUTE: {
            "post": operation(
                "postComment",
                "Post a comment or a reply",
                description="The author is the token's `sub`. Rate-limited as `comment`. With an "
                "Idempotency-Key, a retry gets the first answer and adds nothing. Redis being unreachable "
                "is not an error (the count catches up at reconcile); 503 `unavailable`: Postgres is "
                f"unreachable. At most {12 * max_chars + 1024} bytes of body.",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "contentId"), ref("parameters", "Idempotency-Key")],
                body={"required": True, "content": json_content(body)},
                responses={
                    201: {
                        **ok(
                            "The comment.",
                            comment,
                            {"Idempotent-Replayed": ref("headers", "Idempotent-Replayed")},
                        ),
                        "links": {
                            "deleteIt": {
                                "operationId": "deleteComment",
                                "parameters": {
                                    "contentId": "$response.body#/content_id",
                                    "commentId": "$response.body#/comment_id",
                                },
                            },
                            "listItsReplies": {
                                "operationId": "listComments",
                                "parameters": {
                                    "contentId": "$response.body#/content_id",
                                    "parent_comment_id": "$response.body#/comment_id",
                                },
                            },
                        },
                    }
                },
                errors={
                    400: (*JSON_BODY_400, "invalid_idempotency_key"),
                    401: TOKEN_ERRORS,
                    404: (*NOT_FOUND, "parent_comment_not_found"),
                    409: ("parent_comment_deleted", "idempotency_key_busy"),
                    413: ("body_too_large",),
                    422: (
                        "invalid_content_id",
                        *JSON_BODY_422,
                        "invalid_comment_body",
                        "empty_comment_body",
                        "comment_body_too_long",
                        "invalid_parent_comment_id",
                        "parent_comment_other_content",
                        "idempotency_key_reused",
                    ),
                    429: ("rate_limited",),
                    503: ("unavailable",),
                },
            ),
            "get": operation(
                "listComments",
                "List an item's top-level comments, or one thread's replies",
                description="No token needed. Top-level comments newest first; with `parent_comment_id`, "
                "that thread's replies oldest first. Keyset pages: comments posted while a client pages "
                "never shift a page boundary. Deleted comments keep their place (`deleted: true`). 503 "
                "`unavailable`: Postgres is unreachable.",
                tags=TAGS,
                security=AUTH_OPTIONAL,
                parameters=[
                    ref("parameters", "contentId"),
                    ref("parameters", "parentCommentId"),
                    ref("parameters", "limit"),
                    ref("parameters", "cursor"),
                ],
                responses={200: ok("One page.", page_schema(comment))},
                errors={
                    400: ("invalid_cursor",),
                    401: INVALID_TOKEN,
                    404: (*NOT_FOUND, "parent_comment_not_found"),
                    422: ("invalid_content_id", "invalid_limit", "invalid_parent_comment_id"),
                    503: ("unavailable",),
                },
            ),
        },
        comments.COMMENT_ROUTE: {
            "delete": operation(
                "deleteComment",
                "Delete a comment (its author or the item's creator)",
                description="A soft delete: the comment keeps its place, id and replies, served without "
                "body and author. Deleting again changes nothing (204). The creator is the content "
                "registry's. 503 `unavailable`: Postgres is unreachable.",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "contentId"), ref("parameters", "commentId")],
                responses={204: ok("Deleted (empty body).")},
                errors={
                    401: TOKEN_ERRORS,
                    403: ("delete_not_allowed",),
                    404: (*NOT_FOUND, "comment_not_found"),
                    422: ("invalid_content_id", "invalid_comment_id"),
                    503: ("unavailable",),
                },
            )
        },
    }
