"""Errors users see: a status, a stable machine-readable ``error`` code and a sentence.

Nothing internal (tracebacks, SQL, Redis replies) ever reaches a response body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.headers, **self.extra)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> Response:
    return json_response({"error": code, "message": message, **extra}, status, headers)


_HTTP_CODES = {
    400: ("bad_request", "The request could not be understood."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "This method is not allowed on this resource."),
}


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
    return error_response(exc.status_code, code, message, exc.headers)


def internal_error(method: str, path: str) -> Response:
    """The 500 of an exception nothing handled (logged here, with its traceback)."""
    log.exception("unhandled error on %s %s", method, path)
    return error_response(500, "internal_error", "The server failed to handle the request.")


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    return internal_error(request.method, request.url.path)


def unavailable(retry_after_s: int, message: str, code: str = "unavailable") -> ApiError:
    """503 with Retry-After: a dependency cannot serve this request now; retrying later can work."""
    return ApiError(503, code, message, {"Retry-After": str(retry_after_s)})


def memory_full(retry_after_s: int) -> ApiError:
    """503 ``redis_memory_full``: Redis is at maxmemory with nothing left it may evict (only changes not
    yet written to Postgres); the flusher is freeing memory (docs/redis-memory.md)."""
    return unavailable(
        retry_after_s,
        "Redis is full of changes not yet written to Postgres; retry later.",
        "redis_memory_full",
    )
