"""``DELETE /internal/v1/users/{userId}``: the GDPR purge of one user (daemon/purge.py), for trusted
services (scope ``internal``). A thin wrapper: the ``user.deleted`` consumer calls the same function."""

from __future__ import annotations

import logging
import re

from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.instrument import instrumented
from api.services import Services
from daemon.errors import PG_ERRORS, PurgeIncomplete
from daemon.purge import purge_user

log = logging.getLogger(__name__)

PURGE_ROUTE = "/internal/v1/users/{userId}"
USER_ID_MAX_LEN = 256
# A token's sub: any text but control characters (and lone surrogates, which no store can encode).
_USER_ID = re.compile(f"[^\x00-\x1f\x7f\ud800-\udfff]{{1,{USER_ID_MAX_LEN}}}")


@instrumented(PURGE_ROUTE)
async def purge(request: Request) -> Response:
    services: Services = request.app.state.services
    services.auth.require(request.headers.get("authorization"), scope="internal")
    user_id = request.path_params["userId"]
    if not _USER_ID.fullmatch(user_id):
        raise ApiError(
            422,
            "invalid_user_id",
            f"userId must be 1 to {USER_ID_MAX_LEN} characters, no control characters.",
        )
    retry = {"Retry-After": str(services.settings.buffer_retry_after_s)}
    try:
        pool = await services.pool()
    except PG_ERRORS as exc:
        log.warning("purge refused: Postgres unavailable (%s)", exc)
        raise ApiError(503, "unavailable", "The purge could not run; retry.", retry) from None
    try:
        summary = await purge_user(services.store, pool, user_id)
    except PurgeIncomplete as exc:
        raise ApiError(
            503,
            "purge_incomplete",
            "Some records could not be removed yet (Redis or Postgres unavailable); retry.",
            retry,
            failed_steps=exc.failed,
            **exc.summary,
        ) from None
    return json_response(summary, 202)
