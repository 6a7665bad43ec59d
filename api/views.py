"""View ingestion: single views and trusted bulk batches, both into the local aggregation buffer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.services import Services

ACCEPTED = Response(status_code=202)


def _full(services: Services) -> ApiError:
    retry = str(services.settings.buffer_retry_after_s)
    return ApiError(503, "buffer_full", "The view buffer is full; retry later.", {"Retry-After": retry})


async def post_view(request: Request) -> Response:
    services: Services = request.app.state.services
    content_id = services.bodies.content_id(request.path_params["contentId"])
    headers = request.headers
    services.auth.authenticate(headers.get("authorization"))
    watch_seconds = 0
    if "content-length" in headers or "transfer-encoding" in headers:
        body = await services.bodies.read(request, services.settings.body_max_bytes)
        watch_seconds = services.bodies.single(body)
    if not services.buffer.add(content_id, watch_seconds):
        raise _full(services)
    return ACCEPTED


async def post_batch(request: Request) -> Response:
    services: Services = request.app.state.services
    services.auth.require(request.headers.get("authorization"), scope="ingest")
    body = await services.bodies.read(request, services.settings.batch_max_bytes)
    items = services.bodies.decode_batch(body, request.headers.get("content-type", ""))
    batch = services.bodies.batch(items)
    if batch.events and not services.buffer.add_many(batch.counts, batch.watch, batch.events):
        raise _full(services)
    return json_response({"accepted": batch.events}, 202)
