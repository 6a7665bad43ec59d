"""``?limit=`` and opaque ``?cursor=`` query parameters of the list endpoints (comments, watch history,
playlists), and the positive integer ids (comments, playlists) they and the paths carry.

One rule for all of them: a ``limit`` out of range is a 422 ``invalid_limit`` (the client chose it), a
``cursor`` that is not a ``next_cursor`` the same list returned is a 400 ``invalid_cursor`` (an opaque
token the client did not build).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson
from starlette.requests import Request

from api.errors import ApiError

PAGE_DEFAULT, PAGE_MAX = 20, 100
MAX_ID = 2**63 - 1  # comment and playlist ids are Postgres bigints
_DIGITS = re.compile(r"[0-9]{1,19}")  # (int() of thousands of digits would raise, not refuse)


def positive_int(raw: str | None, maximum: int = MAX_ID) -> int | None:
    """``raw`` as an integer from 1 to ``maximum``, or None when it is not one."""
    if raw is None or not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        return None
    return int(raw)


def limit_param(request: Request, default: int = PAGE_DEFAULT, maximum: int = PAGE_MAX) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    limit = positive_int(raw, maximum)
    if limit is None:
        raise ApiError(422, "invalid_limit", f"limit must be an integer from 1 to {maximum}.")
    return limit


def encode_cursor(value: Any) -> str:
    """An opaque cursor: base64url of the JSON of ``value``, without padding."""
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def cursor_param(request: Request) -> Any:
    """The decoded ``?cursor=``, or None when absent; the caller checks its shape (``bad_cursor``)."""
    raw = request.query_params.get("cursor")
    if not raw:  # absent, or empty (`cursor=`): the first page
        return None
    try:
        return orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        raise bad_cursor() from None


def bad_cursor() -> ApiError:
    return ApiError(400, "invalid_cursor", "cursor is not a next_cursor this list returned.")
