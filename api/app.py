"""The Starlette application: routes, error handlers, lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from api import (
    comments,
    health,
    history,
    internal,
    live,
    live_page,
    openapi,
    playlists,
    purge,
    reactions,
    reads,
    shares,
    stats,
    subscriptions,
    views,
)
from api.errors import handle_domain_error, handle_http_exception, handle_unexpected
from api.hotpaths import HotPaths
from api.services import Services
from daemon import logs
from daemon.errors import DomainError
from daemon.proc.server import before_worker_stops
from daemon.settings import Settings

log = logging.getLogger(__name__)

ROUTES = [
    Route(views.VIEW_ROUTE, views.SingleView(), methods=["POST"]),
    Route(views.BATCH_ROUTE, views.BatchViews(), methods=["POST"]),
    Route(reactions.LIKE_ROUTE, reactions.like, methods=["POST"]),
    Route(reactions.LIKE_ROUTE, reactions.unlike, methods=["DELETE"]),
    Route(reactions.DISLIKE_ROUTE, reactions.dislike, methods=["POST"]),
    Route(reactions.DISLIKE_ROUTE, reactions.undislike, methods=["DELETE"]),
    Route(stats.STATS_ROUTE, stats.get_stats, methods=["GET"]),
    Route(stats.BATCH_STATS_ROUTE, stats.batch_stats, methods=["POST"]),
    Route(stats.DAILY_STATS_ROUTE, stats.get_daily_stats, methods=["GET"]),
    Route(reads.CREATOR_STATS_ROUTE, reads.get_creator_stats, methods=["GET"]),
    Route(reads.SUBSCRIBERS_ROUTE, reads.subscribers, methods=["GET"]),
    Route(reads.MY_LIKES_ROUTE, reads.my_likes, methods=["GET"]),
    Route(reads.MY_SUBSCRIPTIONS_ROUTE, reads.my_subscriptions, methods=["GET"]),
    Route(reads.TRENDING_ROUTE, reads.trending, methods=["GET"]),
    Route(live.CONTENT_LIVE_ROUTE, live.content_events, methods=["GET"]),
    Route(live.CREATOR_LIVE_ROUTE, live.creator_events, methods=["GET"]),
    Route(live_page.PAGE_ROUTE, live_page.page, methods=["GET"]),
    Route(internal.REGISTRY_ROUTE, internal.put_content, methods=["PUT"]),
    Route(purge.PURGE_ROUTE, purge.purge, methods=["DELETE"]),
    Route(shares.SHARES_ROUTE, shares.share, methods=["POST"]),
    Route(comments.COMMENTS_ROUTE, comments.post_comment, methods=["POST"]),
    Route(comments.COMMENTS_ROUTE, comments.list_comments, methods=["GET"]),
    Route(comments.COMMENT_ROUTE, comments.delete_comment, methods=["DELETE"]),
    Route(subscriptions.SUBSCRIBE_ROUTE, subscriptions.subscribe, methods=["POST"]),
    Route(subscriptions.SUBSCRIBE_ROUTE, subscriptions.unsubscribe, methods=["DELETE"]),
    Route(subscriptions.CREATOR_ROUTE, subscriptions.get_creator, methods=["GET"]),
    Route(history.HISTORY_ROUTE, history.list_entries, methods=["GET"]),
    Route(history.HISTORY_ROUTE, history.clear, methods=["DELETE"]),
    Route(history.ENTRY_ROUTE, history.put_entry, methods=["PUT"]),
    Route(history.ENTRY_ROUTE, history.get_entry, methods=["GET"]),
    Route(playlists.PLAYLISTS_ROUTE, playlists.list_playlists, methods=["GET"]),
    Route(playlists.PLAYLISTS_ROUTE, playlists.create_playlist, methods=["POST"]),
    Route(playlists.PLAYLIST_ROUTE, playlists.get_playlist, methods=["GET"]),
    Route(playlists.PLAYLIST_ROUTE, playlists.update_playlist, methods=["PATCH"]),
    Route(playlists.PLAYLIST_ROUTE, playlists.delete_playlist, methods=["DELETE"]),
    Route(playlists.ITEMS_ROUTE, playlists.add_item, methods=["POST"]),
    Route(playlists.ITEM_ROUTE, playlists.move_item, methods=["PATCH"]),
    Route(playlists.ITEM_ROUTE, playlists.remove_item, methods=["DELETE"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    Route(openapi.OPENAPI_ROUTE, openapi.serve, methods=["GET"]),
]
WEBSOCKET_ROUTES = [
    WebSocketRoute(live.CONTENT_LIVE_ROUTE, live.content_websocket),
    WebSocketRoute(live.CREATOR_LIVE_ROUTE, live.creator_websocket),
]
HOT_PATHS = (views.VIEW_ROUTE, reactions.LIKE_ROUTE, reactions.DISLIKE_ROUTE)
HOT_ROUTES = [route for route in ROUTES if route.path in HOT_PATHS]
_ROUTE_OF_ENDPOINT = {route.endpoint: route.path for route in ROUTES}
_METHODS_OF_PATH: dict[str, set[str]] = {}
for _route in ROUTES:
    _METHODS_OF_PATH.setdefault(_route.path, set()).update(_route.methods or ())


def _allow_all_methods(handler):  # type: ignore[no-untyped-def]
    """A 405's ``Allow`` lists every method of the path. Starlette's names only the methods of the first
    route with that path (``POST`` for ``/like``, which also has ``DELETE`` on a route of its own)."""

    async def handle(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        route = _ROUTE_OF_ENDPOINT.get(request.scope.get("endpoint"))
        if response.status_code == 405 and route is not None:
            response.headers["Allow"] = ", ".join(sorted(_METHODS_OF_PATH[route]))
        return response

    return handle


def _counted(handler):  # type: ignore[no-untyped-def]
    """Count the answers of the error handlers (404, 405, 500) that endpoints never saw."""

    async def handle(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        route = _ROUTE_OF_ENDPOINT.get(request.scope.get("endpoint"), "unmatched")
        request.app.state.services.metrics.requests.observe(route, request.method, response.status_code, 0.0)
        return response

    return handle


def build_app(services: Services) -> HotPaths:
    """The Starlette app behind HotPaths (the likes, dislikes and single views go to their endpoints
    directly; see api/hotpaths.py)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logs.log_start("api", services.settings)
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = Starlette(
        routes=[*ROUTES, *WEBSOCKET_ROUTES],
        exception_handlers={
            DomainError: handle_domain_error,
            HTTPException: _counted(_allow_all_methods(handle_http_exception)),
            Exception: _counted(handle_unexpected),
        },
        lifespan=lifespan,
    )
    app.state.services = services
    return HotPaths(app, HOT_ROUTES, services.metrics.requests.observe)


def create_app() -> HotPaths:
    """Factory used by the server: settings from the environment."""
    settings = Settings.from_env()
    logs.configure(settings)
    services = Services.create(settings)
    live_streams = services.live
    assert live_streams is not None
    # SIGTERM: close the live connections with code 1001 (SSE: end the streams) before granian closes them
    before_worker_stops(lambda: live_streams.close(settings.live_send_timeout_s))
    return build_app(services)
