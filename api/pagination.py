"""``?limit=`` and opaque ``?cursor=`` query parameters of the list endpoints."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from starlette.requests import Request

from api.errors import ApiError


def limit_param(request: Request, default: int, maximum: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ApiError(422, "invalid_limit", f"limit must be an integer from 1 to {maximum}.")
    return int(raw)


def encode_cursor(value: Any) -> str:
    """An opaque cursor: base64url of the JSON of ``value``, without padding."""
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def cursor_param(request: Request) -> Any:
    """The decoded ``?cursor=``, or None when absent; the caller checks its shape (``bad_cursor``)."""
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    try:
        return orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        raise bad_cursor() from None


def bad_cursor() -> ApiError:
    return ApiError(422, "invalid_cursor", "cursor is not a cursor this list returned.")
