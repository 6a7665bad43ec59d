"""View ingestion: single views and trusted bulk batches, both into the local aggregation buffer.

The single view is the hottest route of the service, so it is a raw ASGI endpoint: it reads the few
headers it needs straight from the scope, skips the body read when there is none, and sends a
prebuilt 202. Everything else about it (validation, errors, metrics) matches the other routes.
"""

from __future__ import annotations

from time import perf_counter

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.errors import ApiError, json_response
from api.ingest import MEDIA_STARTED, NO_BODY
from api.services import Services
from daemon.keys import PLAYBACK_COUNTERS

VIEW_ROUTE = "/api/v1/content/{contentId}/views"
BATCH_ROUTE = "/api/v1/views/batch"

_ACCEPTED_START = {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]}
_EMPTY_BODY = {"type": "http.response.body", "body": b""}


def _full(services: Services) -> ApiError:
    retry = str(services.settings.buffer_retry_after_s)
    return ApiError(503, "buffer_full", "The view buffer is full; retry later.", {"Retry-After": retry})


class SingleView:
    """POST /api/v1/content/{contentId}/views -> 202. Anonymous allowed; a bad token is a 401."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        services: Services = scope["app"].state.services
        authorization = length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        try:
            content_id = services.bodies.content_id(scope["path_params"]["contentId"])
            principal = None
            if authorization is not None:
                principal = services.auth.authenticate(authorization.decode("latin-1"))
            view = NO_BODY
            if chunked or (length is not None and length != b"0"):
                body = await services.bodies.read(Request(scope, receive), services.settings.body_max_bytes)
                view = services.bodies.single_view(body)
            if view.event_type == MEDIA_STARTED:  # a view (the default); with a token, a unique viewer
                user = None if principal is None else principal.sub
                accepted = services.buffer.add(content_id, view.watch_seconds, user)
            else:
                counter = PLAYBACK_COUNTERS[view.event_type]
                accepted = services.buffer.add_signal(counter, content_id, view.watch_seconds)
            if not accepted:
                raise _full(services)
            if principal is not None and services.events.enabled:  # type: ignore[union-attr]
                services.events.playback(  # type: ignore[union-attr]
                    (principal.sub, content_id, view.event_type, view.given_seconds, view.session_id)
                )
        except ApiError as exc:
            await exc.response()(scope, receive, send)
            services.metrics.requests.observe(VIEW_ROUTE, "POST", exc.status, perf_counter() - started)
            return
        await send(_ACCEPTED_START)
        await send(_EMPTY_BODY)
        services.metrics.requests.observe(VIEW_ROUTE, "POST", 202, perf_counter() - started)


class BatchViews:
    """POST /api/v1/views/batch -> 202 {"accepted": n}: trusted services, scope ``ingest``.

    Raw ASGI too: at 1,000 events a body, the per-request layers of Starlette are worth skipping.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        services: Services = scope["app"].state.services
        request = Request(scope, receive)
        try:
            response = await self._handle(services, request)
        except ApiError as exc:
            response = exc.response()
        await response(scope, receive, send)
        services.metrics.requests.observe(BATCH_ROUTE, "POST", response.status_code, perf_counter() - started)

    @staticmethod
    async def _handle(services: Services, request: Request) -> Response:
        services.auth.require(request.headers.get("authorization"), scope="ingest")
        body = await services.bodies.read(request, services.settings.batch_max_bytes)
        items = services.bodies.decode_batch(body, request.headers.get("content-type", ""))
        events = services.events
        batch = services.bodies.batch(items, playback=events is not None and events.enabled)
        viewers = (batch.viewer_ids, batch.viewer_users) if batch.viewer_ids else None
        if batch.events and not services.buffer.add_many(
            batch.ids, batch.watch_ids, batch.watch_seconds, batch.signals, viewers
        ):
            raise _full(services)
        if batch.playback and events is not None:
            events.playback_many(batch.playback)
        return json_response({"accepted": batch.events}, 202)
