"""Live counts over WebSocket and Server-Sent Events (docs/api.md "Live counts"):

- ``GET /api/v1/content/{contentId}/live``: an item's counts (the body of ``GET …/stats`` without a
  viewer, plus ``ts``). No token needed.
- ``GET /api/v1/creators/{creatorId}/live``: the body of ``GET /api/v1/creators/{creatorId}/stats``
  plus ``ts``; only the creator's own token (``sub`` equal to creatorId) or scope ``internal``, sent as
  ``Authorization: Bearer`` or, for browsers that cannot set headers on a WebSocket or an EventSource, as
  ``?access_token=``.

A WebSocket upgrade gets frames; ``Accept: text/event-stream`` gets an event stream; anything else 406.
Every refusal (bad id, token, too many connections, counts unavailable) is the API's JSON error, sent
before the upgrade (the WebSocket Denial Response). The hubs of daemon/live.py do the reading and the
fan-out; this module only carries their messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from time import perf_counter

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from api.auth import unauthorized
from api.errors import ApiError, api_error
from api.services import Services
from api.subscriptions import creator_id
from daemon.errors import DomainError
from daemon.live import Dropped, Feed, Hub, Message
from daemon.timefmt import utc_timestamp

log = logging.getLogger(__name__)

CONTENT_LIVE_ROUTE = "/api/v1/content/{contentId}/live"
CREATOR_LIVE_ROUTE = "/api/v1/creators/{creatorId}/live"
EVENT_STREAM = "text/event-stream"
CLOSE_GOING_AWAY = 1001  # RFC 6455: the server is going down
CLOSE_TRY_AGAIN_LATER = 1013
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
]


def _admit(services: Services, conn: HTTPConnection, stream: str) -> tuple[Hub, str]:
    """The hub and key a request may watch; raises the API's error otherwise (before any upgrade): the
    id, the token, then the transport (a request that is no upgrade must accept an event stream), then
    room for one more connection."""
    assert services.live is not None
    if stream == "content":
        key = services.bodies.content_id(conn.path_params["contentId"])
        services.auth.authenticate(_authorization(conn))  # optional, but valid if sent
        hub = services.live.content
    else:
        key = creator_id(services, conn.path_params["creatorId"])
        principal = services.auth.require(_authorization(conn))
        if principal.sub != key and "internal" not in principal.scopes:
            raise ApiError(
                403,
                "not_your_creator",
                "Only the creator's own token or scope internal may watch its counts.",
            )
        hub = services.live.creator
    if conn.scope["type"] == "http" and EVENT_STREAM not in conn.headers.get("accept", ""):
        raise ApiError(
            406,
            "not_acceptable",
            "Live counts are a WebSocket (send an upgrade) or Server-Sent Events (send"
            " 'Accept: text/event-stream').",
        )
    if services.live.full():
        raise ApiError(
            503,
            "too_many_connections",
            f"This process holds its {services.live.max_connections} live connections; try again later.",
            {"Retry-After": str(services.settings.buffer_retry_after_s)},
        )
    return hub, key


def _authorization(conn: HTTPConnection) -> str | None:
    """The Authorization header, else ``?access_token=`` as one (an empty one is an invalid token)."""
    header = conn.headers.get("authorization")
    query = conn.query_params.get("access_token")
    if query == "":
        raise unauthorized("invalid_token", "access_token must not be empty.")
    if header is None and query is not None:
        return f"Bearer {query}"
    return header


async def _open(services: Services, conn: HTTPConnection, stream: str) -> tuple[Hub, Feed]:
    """Admit the connection, count it, and subscribe it (its first counts read); uncounted on error."""
    assert services.live is not None
    hub, key = _admit(services, conn, stream)
    services.live.opened()
    try:
        return hub, await hub.subscribe(key)
    except BaseException:
        services.live.closed()
        raise


def _closed(services: Services, hub: Hub, feed: Feed) -> None:
    assert services.live is not None
    hub.unsubscribe(feed)
    services.live.closed()


async def _until_disconnect(receive: Receive, disconnect: str) -> None:
    while (await receive())["type"] != disconnect:
        pass  # what a client sends on a live stream is ignored


async def _serve(
    hub: Hub,
    feed: Feed,
    send: Callable[[Message], Awaitable[object]],
    keepalive: Callable[[], Awaitable[object]],
    counted: Callable[[], object],
    disconnected: Awaitable[None],
) -> str:
    """Pump ``feed`` until the client leaves ("disconnect"), is too slow ("dropped") or the server stops
    ("shutdown")."""
    pump = asyncio.ensure_future(hub.pump(feed, send, keepalive, counted))
    gone = asyncio.ensure_future(disconnected)
    try:
        await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, gone):
            task.cancel()
        await asyncio.gather(pump, gone, return_exceptions=True)
    if gone.done() and not gone.cancelled():
        return "disconnect"
    exc = pump.exception() if not pump.cancelled() else None
    if isinstance(exc, Dropped):
        return "dropped"
    if exc is not None:  # the client went away mid-send
        log.debug("live connection ended: %r", exc)
        return "disconnect"
    return "shutdown"


def _keepalive_text() -> str:
    """Nothing changed up to ``ts`` (a WebSocket has no ping an ASGI app can send)."""
    return orjson.dumps({"ts": utc_timestamp(datetime.now(UTC))}).decode()


def _route(stream: str) -> str:
    return CONTENT_LIVE_ROUTE if stream == "content" else CREATOR_LIVE_ROUTE


def websocket_endpoint(stream: str) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(websocket: WebSocket) -> None:
        services: Services = websocket.app.state.services
        observe = services.metrics.requests.observe
        started = perf_counter()
        try:
            hub, feed = await _open(services, websocket, stream)
        except DomainError as exc:
            response = api_error(exc).response()
            observe(_route(stream), "GET", response.status_code, perf_counter() - started)
            await websocket.send_denial_response(response)
            return
        labels = {"stream": stream, "transport": "websocket"}
        services.metrics.live_connections.labels(**labels).inc()
        try:
            await websocket.accept()
            observe(_route(stream), "GET", 101, perf_counter() - started)
            ended = await _serve(
                hub,
                feed,
                lambda m: websocket.send({"type": "websocket.send", "text": m.text}),
                lambda: websocket.send({"type": "websocket.send", "text": _keepalive_text()}),
                services.metrics.live_messages.labels(**labels).inc,
                _until_disconnect(websocket.receive, "websocket.disconnect"),
            )
            if ended == "dropped":
                services.metrics.live_dropped.labels(**labels).inc()
                await _close(websocket, CLOSE_TRY_AGAIN_LATER, "too slow: messages were not read")
            elif ended == "shutdown":
                await _close(websocket, CLOSE_GOING_AWAY, "server shutting down")
        finally:
            services.metrics.live_connections.labels(**labels).dec()
            _closed(services, hub, feed)

    return endpoint


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """A close frame, if the connection can still take one (a client that stopped reading cannot)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason), 1.0)


class EventStream(Response):
    """A ``text/event-stream`` of a feed: ``data: <counts>`` per message, ``: keepalive`` comments; ends
    (the last chunk) when the server stops."""

    def __init__(self, services: Services, hub: Hub, feed: Feed, stream: str) -> None:
        self.services = services
        self.hub = hub
        self.feed = feed
        self.stream = stream
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.services
        labels = {"stream": self.stream, "transport": "sse"}
        services.metrics.live_connections.labels(**labels).inc()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})

            def chunk(body: bytes) -> Awaitable[None]:
                return send({"type": "http.response.body", "body": body, "more_body": True})

            ended = await _serve(
                self.hub,
                self.feed,
                lambda m: chunk(m.event),
                lambda: chunk(b": keepalive\n\n"),
                services.metrics.live_messages.labels(**labels).inc,
                _until_disconnect(receive, "http.disconnect"),
            )
            if ended == "dropped":
                services.metrics.live_dropped.labels(**labels).inc()
            elif ended == "shutdown":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(send({"type": "http.response.body", "body": b""}), 1.0)
        finally:
            services.metrics.live_connections.labels(**labels).dec()
            _closed(services, self.hub, self.feed)


def event_stream_endpoint(stream: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        started = perf_counter()
        try:
            hub, feed = await _open(services, request, stream)
            response: Response = EventStream(services, hub, feed, stream)
        except DomainError as exc:
            response = api_error(exc).response()
        services.metrics.requests.observe(
            _route(stream), request.method, response.status_code, perf_counter() - started
        )
        return response

    return endpoint


content_websocket = websocket_endpoint("content")
creator_websocket = websocket_endpoint("creator")
content_events = event_stream_endpoint("content")
creator_events = event_stream_endpoint("creator")
