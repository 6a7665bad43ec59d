"""Counts of content items: GET /api/v1/content/{contentId}/stats and POST /api/v1/stats/batch.

Both read through ``daemon.stats.read_stats``: Redis's copy, Postgres for what Redis no longer holds or
when it is unavailable (``X-Counts-Source`` says which answered the single read). A batch of up to
``STATS_BATCH_MAX`` ids costs one pipelined Redis round trip and at most one Postgres query.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.ingest import json_object
from api.instrument import instrumented
from api.services import Services
from daemon import keys
from daemon.daily import MAX_DAYS, daily_stats
from daemon.stats import STAT_FIELDS, UNIQUE_FIELDS, read_stats

STATS_ROUTE = "/api/v1/content/{contentId}/stats"
BATCH_STATS_ROUTE = "/api/v1/stats/batch"
DAILY_STATS_ROUTE = "/api/v1/content/{contentId}/stats/daily"
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
STATS_BATCH_MAX = 100  # ids per batch (a feed page renders 20 to 50 items)
_BATCH_FIELDS = frozenset({"content_ids"})

__all__ = [
    "BATCH_STATS_ROUTE",
    "DAILY_STATS_ROUTE",
    "MAX_DAYS",
    "STATS_BATCH_MAX",
    "STATS_ROUTE",
    "STAT_FIELDS",
    "UNIQUE_FIELDS",
]


@instrumented(STATS_ROUTE)
async def get_stats(request: Request) -> Response:
    services: Services = request.app.state.services
    content_id = services.bodies.content_id(request.path_params["contentId"])
    principal = services.auth.authenticate(request.headers.get("authorization"))
    (stats,) = await read_stats(services, [content_id], principal.sub if principal is not None else None)
    return json_response(stats.body, headers={"X-Counts-Source": stats.source})


@instrumented(BATCH_STATS_ROUTE)
async def batch_stats(request: Request) -> Response:
    """``{"content_ids": [...]}`` (1 to STATS_BATCH_MAX ids, repeats allowed) -> ``{"items": [...]}``,
    each as the single read answers, in request order."""
    services: Services = request.app.state.services
    principal = services.auth.authenticate(request.headers.get("authorization"))
    max_bytes = STATS_BATCH_MAX * (services.settings.content_id_max_len + 4) + 1024
    ids = parse_batch(services, await services.bodies.read_json(request, max_bytes))
    found = await read_stats(services, ids, principal.sub if principal is not None else None)
    return json_response({"items": [stats.body for stats in found]})


def parse_batch(services: Services, body: bytes) -> list[str]:
    content_ids: Any = json_object(body, _BATCH_FIELDS).get("content_ids")
    if not isinstance(content_ids, list) or not content_ids:
        raise ApiError(422, "invalid_content_ids", "content_ids must be a non-empty array of content ids.")
    if len(content_ids) > STATS_BATCH_MAX:
        raise ApiError(422, "too_many_content_ids", f"At most {STATS_BATCH_MAX} content ids per request.")
    id_ok = services.bodies.id_re.fullmatch
    for index, content_id in enumerate(content_ids):
        if not isinstance(content_id, str) or not id_ok(content_id):
            raise ApiError(
                422,
                "invalid_content_id",
                f"content_ids[{index}] must be 1 to {services.settings.content_id_max_len} characters"
                " of A-Z a-z 0-9 _ . : -",
                index=index,
            )
    return content_ids


@instrumented(DAILY_STATS_ROUTE)
async def get_daily_stats(request: Request) -> Response:
    """``?from=YYYY-MM-DD&to=YYYY-MM-DD`` (UTC days; default: the 30 days ending today; at most
    MAX_DAYS): one entry per day, zeros where nothing happened. No token needed."""
    services: Services = request.app.state.services
    content_id = services.bodies.content_id(request.path_params["contentId"])
    services.auth.authenticate(request.headers.get("authorization"))  # optional, but valid if sent
    today = keys.day_date(keys.uv_day(services.settings.unique_viewers_day))
    last = _day(request, "to") or today
    try:
        first = _day(request, "from") or last - timedelta(days=29)
    except OverflowError:  # "to" in the first days of year 1
        first = date.min
    if first > last or (last - first).days >= MAX_DAYS:
        raise ApiError(
            422, "invalid_date_range", f"from must not be after to, and the range at most {MAX_DAYS} days."
        )
    return json_response(await daily_stats(services, content_id, first, last))


def _day(request: Request, name: str) -> date | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        if not _DAY.fullmatch(raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise ApiError(422, "invalid_date", f"{name} must be a date, YYYY-MM-DD.") from None
