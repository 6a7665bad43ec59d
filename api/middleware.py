"""Request metrics as a plain ASGI middleware (no per-request objects beyond one closure)."""

from __future__ import annotations

from time import perf_counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.metrics import RequestMetrics


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: RequestMetrics, route_names: dict[Any, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_names = route_names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = self.route_names.get(scope.get("endpoint"), "unmatched")
            self.metrics.observe(route, scope["method"], status, perf_counter() - started)
