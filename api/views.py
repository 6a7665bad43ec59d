"""View ingestion: single views and trusted bulk batches, both into the local aggregation buffer.

The single view is the hottest route of the service, so it is a raw ASGI endpoint: it reads the few
headers it needs straight from the scope, skips the body read when there is none, and sends a
prebuilt 202. Everything else about it (validation, errors, metrics) matches the other routes.
"""

from __future__ import annotations

from time import perf_counter

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api import idempotency
from api.errors import ApiError, api_error, json_response
from api.ingest import MEDIA_STARTED, NO_BODY
from api.ingest import SingleView as SingleViewBody
from api.services import Services
from daemon import keys
from daemon.errors import DomainError
from daemon.keys import PLAYBACK_COUNTERS

VIEW_ROUTE = "/api/v1/content/{contentId}/views"
BATCH_ROUTE = "/api/v1/views/batch"

_ACCEPTED_START = {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]}
_EMPTY_BODY = {"type": "http.response.body", "body": b""}
_REPLAYED_START = {**_ACCEPTED_START, "headers": [*_ACCEPTED_START["headers"], idempotency.REPLAYED_HEADER]}


def _full(services: Services) -> ApiError:
    retry = str(services.settings.buffer_retry_after_s)
    return ApiError(503, "buffer_full", "The view buffer is full; retry later.", {"Retry-After": retry})


class SingleView:
    """POST /api/v1/content/{contentId}/views -> 202. Anonymous allowed; a bad token is a 401."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        services: Services = scope["app"].state.services
        authorization = length = idem_key = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"idempotency-key":
                idem_key = value
        try:
            content_id = services.bodies.content_id(scope["path_params"]["contentId"])
            principal = None
            if authorization is not None:
                principal = services.auth.authenticate(authorization.decode("latin-1"))
            view = NO_BODY
            if chunked or (length is not None and length != b"0"):
                body = await services.bodies.read_json(
                    Request(scope, receive), services.settings.body_max_bytes
                )
                view = services.bodies.single_view(body)
            user = None if principal is None else principal.sub
            claim: idempotency.Claim | None = None
            if idem_key is not None:
                claim = await _claim(services, content_id, user or "-", idem_key, view)
                if claim is _REPLAYED:
                    await send(_REPLAYED_START)
                    await send(_EMPTY_BODY)
                    services.metrics.requests.observe(VIEW_ROUTE, "POST", 202, perf_counter() - started)
                    return
            if view.event_type == MEDIA_STARTED:  # a view (the default); with a token, a unique viewer
                accepted = services.buffer.add(content_id, view.watch_seconds, user)
            else:
                counter = PLAYBACK_COUNTERS[view.event_type]
                accepted = services.buffer.add_signal(counter, content_id, view.watch_seconds)
            if not accepted:
                if claim is not None:
                    await idempotency.release(services, claim)
                raise _full(services)
            if principal is not None and services.events.enabled:  # type: ignore[union-attr]
                services.events.playback(  # type: ignore[union-attr]
                    (principal.sub, content_id, view.event_type, view.given_seconds, view.session_id)
                )
        except DomainError as exc:
            error = api_error(exc)
            await error.response()(scope, receive, send)
            services.metrics.requests.observe(VIEW_ROUTE, "POST", error.status, perf_counter() - started)
            return
        await send(_ACCEPTED_START)
        await send(_EMPTY_BODY)
        services.metrics.requests.observe(VIEW_ROUTE, "POST", 202, perf_counter() - started)


_REPLAYED: idempotency.Claim = (-1, "", "")


async def _claim(
    services: Services, content_id: str, user: str, header: bytes, view: SingleViewBody
) -> idempotency.Claim:
    """The single view's Idempotency-Key claimed (its record), or ``_REPLAYED``. The request is compared
    parsed, not byte for byte: the same JSON with other spacing or key order is the same request."""
    key = idempotency.checked_idempotency_key(header.decode("latin-1"))
    shard = keys.shard_of(content_id, services.settings.shards)
    parsed = orjson.dumps([view.given_seconds, view.event_type, view.session_id])
    record = (shard, keys.view_record(content_id, user, key), idempotency.fingerprint(parsed))
    if await idempotency.claim(services, record, "") is not None:
        return _REPLAYED
    return record


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
        except DomainError as exc:
            response = api_error(exc).response()
        await response(scope, receive, send)
        services.metrics.requests.observe(BATCH_ROUTE, "POST", response.status_code, perf_counter() - started)

    @staticmethod
    async def _handle(services: Services, request: Request) -> Response:
        principal = services.auth.require(request.headers.get("authorization"), scope="ingest")
        key = idempotency.idempotency_key(request)
        body = await services.bodies.read(request, services.settings.batch_max_bytes)
        content_type = request.headers.get("content-type", "")
        items = services.bodies.decode_batch(body, content_type)
        events = services.events
        batch = services.bodies.batch(items, playback=events is not None and events.enabled)
        viewers = (batch.viewer_ids, batch.viewer_users) if batch.viewer_ids else None
        claim: idempotency.Claim | None = None
        if key:  # claimed after validation: a refused body claims nothing
            request_fingerprint = idempotency.fingerprint(content_type.encode(), body)
            shard = keys.shard_of(principal.sub, services.settings.shards)
            claim = (shard, keys.batch_record(principal.sub, key), request_fingerprint)
            first = await idempotency.claim(services, claim, str(batch.events))
            if first is not None:
                return json_response({"accepted": int(first)}, 202, {"Idempotent-Replayed": "true"})
        if batch.events and not services.buffer.add_many(
            batch.ids, batch.watch_ids, batch.watch_seconds, batch.signals, viewers
        ):
            if claim is not None:
                await idempotency.release(services, claim)
            raise _full(services)
        if batch.playback and events is not None:
            events.playback_many(batch.playback)
        return json_response({"accepted": batch.events}, 202)
