"""Request metrics without a middleware layer.

Each endpoint records its own route template, status and duration (``instrumented`` for ordinary
handlers; the raw ASGI view endpoint does it inline). Errors raised by handlers become responses here,
so every answer is counted once; 404/405 and unexpected errors are counted by their handlers.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from time import perf_counter

from starlette.requests import Request
from starlette.responses import Response

from api.errors import api_error
from daemon.errors import DomainError

Handler = Callable[[Request], Awaitable[Response]]


def instrumented(route: str) -> Callable[[Handler], Handler]:
    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            started = perf_counter()
            try:
                response = await handler(request)
            except DomainError as exc:
                response = api_error(exc).response()
            request.app.state.services.metrics.requests.observe(
                route, request.method, response.status_code, perf_counter() - started
            )
            return response

        return endpoint

    return wrap
