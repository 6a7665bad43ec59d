"""The read side beyond an item's stats: a creator's totals (GET /api/v1/creators/{creatorId}/stats,
daemon/creators.py) and the lists (daemon/lists.py) GET /api/v1/users/me/likes, /users/me/subscriptions
and /creators/{creatorId}/subscribers, newest first, paged with an opaque cursor."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.instrument import instrumented
from api.pagination import MAX_ID, bad_cursor, cursor_param, encode_cursor, limit_param
from api.services import Services
from api.subscriptions import creator_id
from daemon import lists
from daemon.creators import creator_stats
from daemon.errors import PG_ERRORS, REDIS_ERRORS
from daemon.trending import TRENDING_MAX, WINDOWS

MY_LIKES_ROUTE = "/api/v1/users/me/likes"
MY_SUBSCRIPTIONS_ROUTE = "/api/v1/users/me/subscriptions"
SUBSCRIBERS_ROUTE = "/api/v1/creators/{creatorId}/subscribers"
CREATOR_STATS_ROUTE = "/api/v1/creators/{creatorId}/stats"
TRENDING_ROUTE = "/api/v1/trending"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _scope(listing: lists.Listing, owner: str) -> int:
    return zlib.crc32(f"{listing.name}|{owner}".encode())


def _position(request: Request, listing: lists.Listing, owner: str) -> lists.Position | None:
    """The keyset position of ``?cursor=`` (None without one); 400 invalid_cursor when it is not a
    next_cursor of this very list."""
    value = cursor_param(request)
    if value is None:
        return None
    if not (
        isinstance(value, list)
        and len(value) == 3
        and value[0] == _scope(listing, owner)
        and isinstance(value[1], int)
        and 0 <= value[1] <= MAX_ID
        and isinstance(value[2], str)
    ):
        raise bad_cursor()
    return _EPOCH + timedelta(microseconds=value[1]), value[2]


async def _page(services: Services, request: Request, listing: lists.Listing, owner: str) -> Response:
    limit = limit_param(request)
    after = _position(request, listing, owner)
    try:
        pool = await services.pool()
        items, following = await lists.page(pool, listing, owner, after, limit)
    except PG_ERRORS:
        raise services.unavailable("Lists are temporarily unavailable.") from None
    next_cursor = None
    if following is not None:
        at, last = following
        next_cursor = encode_cursor(
            [_scope(listing, owner), (at - _EPOCH) // timedelta(microseconds=1), last]
        )
    return json_response({"items": items, "next_cursor": next_cursor})


@instrumented(MY_LIKES_ROUTE)
async def my_likes(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    return await _page(services, request, lists.LIKES, principal.sub)


@instrumented(MY_SUBSCRIPTIONS_ROUTE)
async def my_subscriptions(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    return await _page(services, request, lists.SUBSCRIPTIONS, principal.sub)


@instrumented(SUBSCRIBERS_ROUTE)
async def subscribers(request: Request) -> Response:
    """The creator's own token (``sub`` equal to creatorId) or scope ``internal``; else 403."""
    services: Services = request.app.state.services
    principal = services.auth.require(request.headers.get("authorization"))
    creator = creator_id(services, request.path_params["creatorId"])
    if principal.sub != creator and "internal" not in principal.scopes:
        raise ApiError(
            403, "not_your_creator", "Only the creator's own token or scope internal may list subscribers."
        )
    return await _page(services, request, lists.SUBSCRIBERS, creator)


@instrumented(CREATOR_STATS_ROUTE)
async def get_creator_stats(request: Request) -> Response:
    """No token needed: the totals a creator page shows publicly (as an item's stats)."""
    services: Services = request.app.state.services
    creator = creator_id(services, request.path_params["creatorId"])
    services.auth.authenticate(request.headers.get("authorization"))  # optional, but valid if sent
    return json_response(await creator_stats(services, creator))


@instrumented(TRENDING_ROUTE)
async def trending(request: Request) -> Response:
    """``?window=1h|24h|7d`` (default 1h) ``&limit=N`` (1 to 100, default 20): the items with the most
    views in that sliding window, most first. No token needed."""
    services: Services = request.app.state.services
    services.auth.authenticate(request.headers.get("authorization"))  # optional, but valid if sent
    window = request.query_params.get("window", "1h")
    if window not in WINDOWS:
        raise ApiError(422, "invalid_window", f"window must be one of {', '.join(WINDOWS)}.")
    limit = limit_param(request, maximum=TRENDING_MAX)
    assert services.trending is not None
    try:
        items = await services.trending.top(window, limit)
    except REDIS_ERRORS:
        raise services.unavailable("Trending is temporarily unavailable.") from None
    return json_response({"window": window, "items": items})
