"""The reference for the single-view benchmark: a bare Starlette app with the same route as the real one.

It does nothing but answer ``202 Accepted`` with an empty body, so requests/sec against it is the ceiling
that Starlette + granian (ASGI, uvloop, one worker) can reach on this machine. The real service is
measured as a ratio of it. ``python -m loadtest.bare_app --port 8081`` serves it with the granian
options of ``engagementd api`` (daemon/server.py); the CLI equivalent is::

    granian --interface asgi --loop uvloop --workers 1 --backlog 2048 --port 8081 loadtest.bare_app:app
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def post_view(request: Request) -> Response:
    return Response(status_code=202)


app = Starlette(routes=[Route("/api/v1/content/{contentId}/views", post_view, methods=["POST"])])


def serve(host: str, port: int) -> None:
    """Serve :data:`app` with the options ``engagementd api`` gives granian (daemon/server.py)."""
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
