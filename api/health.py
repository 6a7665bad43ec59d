"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from api.errors import json_response
from api.instrument import instrumented
from api.services import Services


@instrumented("/healthz")
async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


@instrumented("/readyz")
async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    checks = dict(
        zip(("redis", "postgres"), await asyncio.gather(_redis(services), _postgres(services)), strict=True)
    )
    ready = all(v == "ok" for v in checks.values()) and not services.buffer.closing
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    if not ready:
        body["error"] = "not_ready"
        body["message"] = "A dependency is unreachable or the process is shutting down."
    return json_response(body, 200 if ready else 503)


async def _redis(services: Services) -> str:
    try:
        await asyncio.wait_for(services.redis.ping(), services.settings.redis_timeout_s)
        return "ok"
    except Exception as exc:  # any failure means not ready; the reason is reported
        return f"error: {type(exc).__name__}"


async def _postgres(services: Services) -> str:
    try:
        pool = await asyncio.wait_for(services.pool(), services.settings.db_timeout_s)
        await asyncio.wait_for(pool.fetchval("SELECT 1"), services.settings.db_timeout_s)
        return "ok"
    except Exception as exc:  # any failure means not ready; the reason is reported
        return f"error: {type(exc).__name__}"


@instrumented("/metrics")
async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    shared = services.shared_metrics
    body = shared.render() if shared is not None else services.metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
