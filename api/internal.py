"""``PUT /internal/v1/content/{contentId}`` (scope ``internal``): the content registry's write endpoint
(daemon/registry.py holds the registry; daemon/engagement_events.py the events that read it)."""

from __future__ import annotations

import logging

import asyncpg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.ingest import json_object
from api.instrument import instrumented
from daemon.registry import CONTENT_TYPES

log = logging.getLogger(__name__)

REGISTRY_ROUTE = "/internal/v1/content/{contentId}"
REGISTRY_FIELDS = frozenset({"creator_id", "content_type"})


# -- PUT /internal/v1/content/{contentId} ------------------------------------------------------


@instrumented(REGISTRY_ROUTE)
async def put_content(request: Request) -> Response:
    services = request.app.state.services
    services.auth.require(request.headers.get("authorization"), scope="internal")
    content_id = services.bodies.content_id(request.path_params["contentId"])
    body = await services.bodies.read_json(request, services.settings.body_max_bytes)
    doc = json_object(body, REGISTRY_FIELDS)
    creator_id = doc.get("creator_id")
    if not isinstance(creator_id, str) or not services.bodies.id_re.fullmatch(creator_id):
        raise ApiError(422, "invalid_creator_id", "creator_id must be a valid id string.")
    content_type = doc.get("content_type")
    if content_type not in CONTENT_TYPES:
        raise ApiError(422, "invalid_content_type", "content_type must be VIDEO or AUDIO.")
    try:
        record = await services.registry.put(content_id, creator_id, content_type)
    except (RedisError, OSError, asyncpg.PostgresError, TimeoutError) as exc:
        log.warning("content registry write failed: %s", exc)
        retry = {"Retry-After": str(services.settings.buffer_retry_after_s)}
        raise ApiError(503, "unavailable", "The content registry is unavailable; retry.", retry) from None
    return json_response(record)
