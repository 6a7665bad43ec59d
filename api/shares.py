"""Shares: POST /api/v1/content/{contentId}/shares (the record and the count: daemon/shares.py)."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.idempotency import idempotency_key
from api.ingest import json_object
from api.instrument import instrumented
from api.reactions import check_rate
from api.services import Services
from daemon.shares import add_share

SHARES_ROUTE = "/api/v1/content/{contentId}/shares"

_FIELDS = frozenset({"platform", "external"})
PLATFORM_PATTERN = "[a-z0-9_-]{1,32}"
_PLATFORM = re.compile(PLATFORM_PATTERN)


def parse_share(body: bytes) -> tuple[str, bool]:
    """(platform, external) from the JSON body ``{"platform": str, "external"?: bool}``."""
    data = json_object(body, _FIELDS)
    platform = data.get("platform")
    if not isinstance(platform, str) or not _PLATFORM.fullmatch(platform):
        raise ApiError(422, "invalid_platform", "platform must be 1 to 32 characters of a-z 0-9 _ -.")
    external = data.get("external", False)
    if not isinstance(external, bool):
        raise ApiError(422, "invalid_external", "external must be true or false.")
    return platform, external


@instrumented(SHARES_ROUTE)
async def share(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    content_id = services.bodies.content_id(request.path_params["contentId"])
    key = idempotency_key(request)
    platform, external = parse_share(
        await services.bodies.read_json(request, services.settings.body_max_bytes)
    )
    await check_rate(services, "share", principal.sub, f"{content_id}|{key}" if key else None)
    result = await add_share(services, content_id, principal.sub, platform, external, key)
    if result["status"] == "added" and services.events is not None:
        services.events.share(principal.sub, content_id)
    headers = {"Idempotent-Replayed": "true"} if result["status"] == "replayed" else None
    return json_response(result["body"], 201, headers=headers)
