"""The hot endpoints, dispatched before Starlette's middleware and router.

Likes, dislikes and single views arrive by the ten thousand a second. Their endpoints are raw ASGI
callables that answer their own errors (api.reactions, api.views), so the layers Starlette puts in front
of every route -- ServerErrorMiddleware and ExceptionMiddleware wrapping ``send`` twice, the router
trying each route's pattern in turn, Route.handle -- only add work to them: the likes benchmark
measured 13% more requests/s and 17% more per CPU-second without them (loadtest/README.md).

``HotPaths`` wraps the Starlette app. A request whose path is exactly ``/api/v1/content/<id>/<last>``
(``<id>`` non-empty, without ``/``, as Starlette's ``{contentId}`` matches it) with one of the hot
endpoint's methods goes straight to that endpoint, with the scope keys Starlette's router would have set
(``app``, ``path_params``, ``endpoint``, ``route``). Everything else -- other paths and methods (404,
405 with Allow), a non-empty ``root_path``, lifespan -- goes to Starlette unchanged. An exception the
endpoint lets through is answered as Starlette's app answers it: logged, 500 ``internal_error``,
counted with the route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import internal_error
from daemon.logs import request_id

log = logging.getLogger(__name__)

PREFIX = "/api/v1/content/"
ID_PARAM = "{contentId}"

# observe(route path, method, status, seconds): the request metric (RequestMetrics.observe)
Observe = Callable[[str, str, int, float], None]


class HotPaths:
    def __init__(self, app: ASGIApp, routes: Iterable[Route], observe: Observe) -> None:
        """``routes``: the routes to serve directly, each ``PREFIX + "{contentId}/<last>"``."""
        self.app = app
        self.observe = observe
        self.table: dict[tuple[str, str], Route] = {}  # (last segment, method) -> route
        for route in routes:
            head, _, last = route.path.rpartition("/")
            if head != PREFIX + ID_PARAM or not last or "{" in last:
                raise ValueError(f"not a hot path: {route.path}")
            for method in route.methods or ():
                if method != "HEAD":  # Starlette adds HEAD to GET routes; a hot GET is not planned
                    self.table[(last, method)] = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":  # the logs of this request name it (daemon/logs.py)
                token = request_id.set(value[:128].decode("latin-1"))
                try:
                    return await self._dispatch(scope, receive, send)
                finally:
                    request_id.reset(token)
        await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            if path.startswith(PREFIX):
                content_id, slash, last = path[len(PREFIX) :].partition("/")
                route = self.table.get((last, scope["method"])) if slash and content_id else None
                if route is not None:
                    scope["app"] = self.app
                    scope["path_params"] = {"contentId": content_id}
                    scope["endpoint"] = route.endpoint
                    scope["route"] = route
                    try:
                        await route.endpoint(scope, receive, send)
                    except Exception:
                        await self._failed(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _failed(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await internal_error(scope["method"], scope["path"])(scope, receive, send)
        except Exception:  # noqa: BLE001 - the response had already started: the server closes it
            log.debug("could not answer 500: the response had already started", exc_info=True)
        self.observe(route.path, scope["method"], 500, 0.0)
