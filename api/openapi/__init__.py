"""The service's OpenAPI 3.1 document, built in Python and served at ``GET /openapi.json``.

Each API module has a spec module here (``api/openapi/<area>.py``) whose ``paths(settings)`` returns
``{route: {method: operation}}``, with the route templates taken from the API module itself. The limits
in the schemas (id length, watch seconds, batch size, ...) come from the process's settings, so the
document states what this process enforces. ``tests/test_openapi.py`` checks that every route of
``api.app.ROUTES`` has an operation and every operation a route, that the error codes documented are
the ones the code raises, and runs schemathesis against a live api process.

To document a new endpoint: add its operation to its area's module (or a new module listed in
``AREAS``), built with ``components.operation``.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from api.instrument import instrumented
from api.openapi import (
    comments,
    components,
    health,
    history,
    internal,
    live,
    playlists,
    purge,
    reactions,
    reads,
    shares,
    stats,
    subscriptions,
    views,
)
from api.openapi.components import Schema
from api.openapi.health import OPENAPI_ROUTE
from daemon.settings import Settings

AREAS = (
    views,
    reactions,
    stats,
    live,
    reads,
    shares,
    comments,
    subscriptions,
    history,
    playlists,
    internal,
    purge,
    health,
)
VERSION = "0.1.0"


def build_document(settings: Settings) -> Schema:
    paths: dict[str, dict[str, Schema]] = {}
    for area in AREAS:
        for route, operations in area.paths(settings).items():
            existing = paths.setdefault(route, {})
            duplicated = existing.keys() & operations.keys()
            if duplicated:
                raise ValueError(f"{route} {sorted(duplicated)} is specified twice (in {area.__name__})")
            existing.update(operations)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "engagementd",
            "version": VERSION,
            "description": "The Engagement Service: views, likes and dislikes, shares, comments, creator "
            "subscriptions, watch history, playlists, the content registry and the GDPR purge of a user."
            ' Every error has the body `{"error": "<code>", "message": '
            '"<sentence>"}`; the codes each status can carry are listed per operation. A 500 '
            "`internal_error` is a bug: it is never an answer this contract promises.",
        },
        "paths": dict(sorted(paths.items())),
        "components": components.components(settings),
    }


def operations(document: Schema) -> set[tuple[str, str]]:
    """(path, METHOD) of every operation in ``document``."""
    return {(path, method.upper()) for path, item in document["paths"].items() for method in item}


@instrumented(OPENAPI_ROUTE)
async def serve(request: Request) -> Response:
    state = request.app.state
    body = getattr(state, "openapi_json", None)
    if body is None:
        body = orjson.dumps(build_document(request.app.state.services.settings))
        state.openapi_json = body
    return Response(body, media_type="application/json")
