"""The Starlette application: routes, error handlers, lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from api import health, stats, views
from api.errors import ApiError, handle_api_error, handle_http_exception, handle_unexpected
from api.middleware import RequestMetricsMiddleware
from api.services import Services
from daemon.settings import Settings

log = logging.getLogger(__name__)

ROUTES = [
    Route("/api/v1/content/{contentId}/views", views.post_view, methods=["POST"]),
    Route("/api/v1/views/batch", views.post_batch, methods=["POST"]),
    Route("/api/v1/content/{contentId}/stats", stats.get_stats, methods=["GET"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
]


def build_app(services: Services) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    route_names = {route.endpoint: route.path for route in ROUTES}
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(RequestMetricsMiddleware, metrics=services.metrics.requests, route_names=route_names)
        ],
        exception_handlers={
            ApiError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def create_app() -> Starlette:
    """Factory used by the server: settings from the environment."""
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return build_app(Services.create(settings))
