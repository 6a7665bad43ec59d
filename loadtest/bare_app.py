"""The reference for the single-view and likes benchmarks: a bare Starlette app with the same routes as
the real one.

``POST /api/v1/content/{contentId}/views`` answers ``202 Accepted`` with an empty body;
``POST|DELETE /api/v1/content/{contentId}/like`` answers 200 with a constant JSON body of the real
one's shape (no token check, no Redis). Requests/sec against them is the ceiling that Starlette +
granian (ASGI, uvloop, one worker) can reach on this machine; the real service is measured as a ratio
of it. ``python -m loadtest.bare_app --port 8081`` serves it with the granian
options of ``engagementd api`` (daemon/proc/server.py); the CLI equivalent is::

    granian --interface asgi --loop uvloop --workers 1 --backlog 2048 --port 8081 loadtest.bare_app:app
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

LIKE_BODY = b'{"state":"liked","likes":1,"dislikes":0}'


async def post_view(request: Request) -> Response:
    return Response(status_code=202)


async def like(request: Request) -> Response:
    return Response(LIKE_BODY, media_type="application/json")


app = Starlette(
    routes=[
        Route("/api/v1/content/{contentId}/views", post_view, methods=["POST"]),
        Route("/api/v1/content/{contentId}/like", like, methods=["POST", "DELETE"]),
    ]
)


def serve(host: str, port: int) -> None:
    """Serve :data:`app` with the options ``engagementd api`` gives granian (daemon/proc/server.py)."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "loadtest.bare_app:app",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        log_access=False,
        backlog=2048,
    ).serve()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve the bare reference app like engagementd api.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    ns = parser.parse_args()
    serve(ns.host, ns.port)
