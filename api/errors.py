"""Errors users see: a status, a stable machine-readable ``error`` code and a sentence.

The core raises domain errors (daemon/errors.py) and knows nothing of HTTP: their statuses are mapped
here, in one table (``STATUSES``); ``ApiError`` is the api's own, for what only HTTP can get wrong (a
body, a header, a token). Nothing internal (tracebacks, SQL, Redis replies) ever reaches a response
body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from daemon.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    Refused,
    Unavailable,
)

log = logging.getLogger(__name__)


class ApiError(DomainError):
    """An error of the HTTP layer, with its status and headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(code, message)
        self.extra = extra  # every field goes to the body (retry_after_s included)
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.headers, **self.extra)


class ClientClosed(ApiError):
    """The client closed the connection before it sent its whole request: nobody reads the answer. It is
    counted as 499 (nginx's "client closed request"), apart from the server's errors."""

    def __init__(self) -> None:
        super().__init__(499, "client_closed_request", "The client closed the connection mid-request.")


# The status of each domain error (its class or the nearest base listed).
STATUSES: dict[type[DomainError], int] = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    Invalid: 422,
    Refused: 429,
    Unavailable: 503,
}


def api_error(exc: DomainError) -> ApiError:
    """The HTTP answer of a domain error: its status from ``STATUSES``, Retry-After when it says when."""
    if isinstance(exc, ApiError):
        return exc
    status = next(STATUSES[cls] for cls in type(exc).__mro__ if cls in STATUSES)
    headers = {} if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
    error = ApiError(status, exc.code, exc.message, headers, **exc.extra)
    error.__cause__ = exc.__cause__
    return error


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


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return api_error(exc).response()


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
