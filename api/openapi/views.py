"""Spec of api/views.py: single views and bulk batches."""

from __future__ import annotations

from api import views
from api.ingest import ITEM_FIELDS, SINGLE_FIELDS
from api.openapi.components import (
    AUTH_OPTIONAL,
    INVALID_TOKEN,
    JSON_BODY_400,
    JSON_BODY_422,
    NOT_FOUND,
    TOKEN_ERRORS,
    Schema,
    auth_scope,
    event_type_schema,
    id_schema,
    json_content,
    ok,
    operation,
    ref,
    session_id_schema,
    watch_seconds_schema,
)
from daemon.settings import Settings

TAGS = ["views"]
_PLAYBACK_422 = ("invalid_watch_seconds", "invalid_event_type", "invalid_session_id")
_REPLAYED = {"Idempotent-Replayed": ref("headers", "Idempotent-Replayed")}
_IDEMPOTENCY = (
    "With an Idempotency-Key (claimed in Redis before the view is buffered), a retry is answered "
    "again and counted once; 503 `idempotency_unavailable`: Redis is unreachable, so the key cannot "
    "be checked; 503 `redis_memory_full`: Redis is at maxmemory with only changes not yet in Postgres, "
    "so the key cannot be recorded."
)


def _single_body(settings: Settings) -> Schema:
    properties = {
        "watch_seconds": watch_seconds_schema(settings),
        "event_type": event_type_schema(),
        "session_id": session_id_schema(),
    }
    assert properties.keys() == SINGLE_FIELDS
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _batch_item(settings: Settings) -> Schema:
    properties = {
        "content_id": id_schema(settings),
        "user_id": id_schema(
            settings, "The viewer: the item is published as an engagement event of this user."
        ),
        "watch_seconds": watch_seconds_schema(settings),
        "event_type": event_type_schema(),
        "session_id": session_id_schema(),
    }
    assert properties.keys() == ITEM_FIELDS
    return {
        "type": "object",
        "required": ["content_id"],
        "properties": properties,
        "additionalProperties": False,
    }


def _batch_columns(settings: Settings) -> Schema:
    """The columnar form of a batch: one array per field of the items, null for an absent field."""
    item = _batch_item(settings)["properties"]
    columns: dict[str, Schema] = {}
    for name, schema in item.items():
        entry = {k: v for k, v in schema.items() if k != "description"}
        if name == "user_id":
            entry["type"] = ["string", "null"]
        columns[name] = {"type": "array", "maxItems": settings.batch_max_items, "items": entry}
    return {
        "type": "object",
        "required": ["content_id"],
        "properties": columns,
        "additionalProperties": False,
        "description": "The same events as columns: each array holds one value per event, all as long as "
        "`content_id` (else 422 `invalid_body`); null where the event has no such field.",
    }


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    items = {"type": "array", "maxItems": settings.batch_max_items, "items": _batch_item(settings)}
    batch = {"oneOf": [items, _batch_columns(settings)]}
    retry = f"Sent with `Retry-After: {settings.buffer_retry_after_s}`."
    return {
        views.VIEW_ROUTE: {
            "post": operation(
                "postView",
                "Count one view (or playback signal) of a content item",
                description="Anonymous requests are allowed; a token that is sent must be valid, and makes "
                "the view an engagement event of its `sub`. The body is optional (at most "
                f"{settings.body_max_bytes} bytes). 503 `buffer_full`: the view buffer is full or the "
                f"process is shutting down. {_IDEMPOTENCY} {retry}",
                tags=TAGS,
                security=AUTH_OPTIONAL,
                parameters=[ref("parameters", "contentId"), ref("parameters", "Idempotency-Key")],
                body={"required": False, "content": json_content(_single_body(settings))},
                responses={202: ok("Accepted (empty body).", headers=_REPLAYED)},
                errors={
                    400: (*JSON_BODY_400, "invalid_idempotency_key"),
                    401: INVALID_TOKEN,
                    404: NOT_FOUND,
                    413: ("body_too_large",),
                    422: ("invalid_content_id", *JSON_BODY_422, *_PLAYBACK_422, "idempotency_key_reused"),
                    503: ("buffer_full", "idempotency_unavailable", "redis_memory_full"),
                },
            )
        },
        views.BATCH_ROUTE: {
            "post": operation(
                "postViewBatch",
                "Bulk view ingestion from trusted services (scope `ingest`)",
                description="A JSON or msgpack array of view items, or an object of columns "
                '(`{"content_id": [...], "user_id": [...]}`, the cheaper form for large batches), all or '
                "nothing: one bad item rejects the batch, and the error's `index` names it. At most "
                f"{settings.batch_max_items} items and {settings.batch_max_bytes} bytes. The "
                "Idempotency-Key is scoped to the ingest client (the token's `sub`). "
                f"{_IDEMPOTENCY} {retry}",
                tags=TAGS,
                security=auth_scope("ingest"),
                parameters=[ref("parameters", "Idempotency-Key")],
                body={
                    "required": True,
                    "content": {
                        "application/json": {"schema": batch},
                        "application/msgpack": {"schema": batch},
                    },
                },
                responses={
                    202: ok(
                        "Accepted: every item counted (views and signals).",
                        {
                            "type": "object",
                            "required": ["accepted"],
                            "properties": {"accepted": ref("schemas", "Count")},
                            "additionalProperties": False,
                        },
                        _REPLAYED,
                    )
                },
                errors={
                    400: (*JSON_BODY_400, "invalid_idempotency_key"),
                    401: TOKEN_ERRORS,
                    403: ("insufficient_scope",),
                    413: ("body_too_large", "too_many_items"),
                    415: ("unsupported_media_type",),
                    422: (
                        "invalid_body",
                        "invalid_item",
                        "unknown_field",
                        "invalid_content_id",
                        "invalid_user_id",
                        *_PLAYBACK_422,
                        "idempotency_key_reused",
                    ),
                    503: ("buffer_full", "idempotency_unavailable", "redis_memory_full"),
                },
            )
        },
    }
