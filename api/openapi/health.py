"""Spec of api/health.py and of the document itself: probes, metrics, /openapi.json."""

from __future__ import annotations

from api.openapi.components import NO_AUTH, Schema, ok, operation
from daemon.settings import Settings

TAGS = ["operations"]
OPENAPI_ROUTE = "/openapi.json"

_CHECK = {"type": "string", "description": "`ok`, or `error: <exception type>`."}
_CHECKS = {
    "type": "object",
    "required": ["redis", "postgres"],
    "properties": {"redis": _CHECK, "postgres": _CHECK},
    "additionalProperties": False,
}


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    not_ready = {
        "type": "object",
        "required": ["status", "checks", "error", "message"],
        "properties": {
            "status": {"const": "unavailable"},
            "checks": _CHECKS,
            "error": {"const": "not_ready"},
            "message": {"type": "string"},
        },
        "additionalProperties": False,
    }
    ready = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {"status": {"const": "ready"}, "checks": _CHECKS},
        "additionalProperties": False,
    }
    return {
        "/healthz": {
            "get": operation(
                "healthz",
                "Liveness: 200 while the process is up",
                tags=TAGS,
                security=NO_AUTH,
                responses={
                    200: ok(
                        "Up.",
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                            "additionalProperties": False,
                        },
                    )
                },
                errors={},
            )
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "Readiness: Redis and Postgres reachable, not shutting down",
                tags=TAGS,
                security=NO_AUTH,
                responses={
                    200: ok("Ready.", ready),
                    503: {
                        "description": "A dependency is unreachable or the process is shutting down.",
                        "content": {"application/json": {"schema": not_ready}},
                    },
                },
                errors={},
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Prometheus text exposition",
                tags=TAGS,
                security=NO_AUTH,
                responses={
                    200: {
                        "description": "The process's metrics (all workers' with `--workers N`).",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                errors={},
            )
        },
        OPENAPI_ROUTE: {
            "get": operation(
                "openapi",
                "This document",
                tags=TAGS,
                security=NO_AUTH,
                responses={200: ok("The OpenAPI 3.1 document of this service.", {"type": "object"})},
                errors={},
            )
        },
    }
