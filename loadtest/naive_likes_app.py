"""The reference for the likes benchmark: a straightforward implementation of the like endpoint.

``POST|DELETE /api/v1/content/{contentId}/like`` with a Bearer HS256 token: ``jwt.decode`` (PyJWT,
no cache) on every request, then ONE awaited ``EVALSHA`` of the project's own ``lua/set_reaction.lua``
through the store (``daemon.store.Store.set_reaction``: the same keys and arguments; a like on a pair
Redis does not hold costs one Postgres read, once) on a ``redis.asyncio`` client with a connection
pool as large as the benchmark's concurrency (redis-py's default, 100, refuses the 101st request in
flight), and the same 200 JSON body ``{"state", "likes", "dislikes"}``
(serialised with orjson like the real api, so the comparison is about auth and Redis, not JSON).
No rate limits, no metrics, no Idempotency-Key validation beyond passing the header on.

It reads the service's environment (ENGAGEMENT_REDIS_URL, ENGAGEMENT_DATABASE_URL,
ENGAGEMENT_JWT_SECRET, ENGAGEMENT_SHARDS, ENGAGEMENT_IDEMPOTENCY_TTL_S) through daemon.settings, so it
writes the same keys in the same Redis.
``python -m loadtest.naive_likes_app --port 8082`` serves it with the granian options of
``engagementd api`` (daemon/proc/server.py). ``GET /healthz`` answers 200 once Redis answers PING.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import jwt
import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon import db
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.store import Store
from lua import Scripts

SETTINGS = Settings.from_env(os.environ)
SCRIPTS = Scripts.load()
STATE_NAMES = {1: "liked", -1: "disliked", 0: "none"}
POOL_SIZE = 1024  # Redis connections at most: one per request in flight


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _endpoint(action: str):  # type: ignore[no-untyped-def]
    async def react(request: Request) -> Response:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _json({"error": "missing_token"}, 401)
        try:
            claims = jwt.decode(token, SETTINGS.jwt_secret, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            return _json({"error": "invalid_token"}, 401)
        user_id = claims.get("sub")
        if not isinstance(user_id, str) or not user_id:
            return _json({"error": "invalid_token"}, 401)
        content_id = request.path_params["contentId"]
        key = request.headers.get("idempotency-key") or ""
        status, state, likes, dislikes = await request.app.state.store.set_reaction(
            content_id, user_id, action, key
        )
        if status == "conflict":
            return _json({"error": "idempotency_key_reused"}, 422)
        return _json({"state": STATE_NAMES[int(state)], "likes": int(likes), "dislikes": int(dislikes)})

    return react


async def healthz(request: Request) -> Response:
    await request.app.state.redis.ping()
    return Response(b"ok")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # redis-py 8's default pool refuses a 101st connection (MaxConnectionsError): sized for the
    # benchmark's concurrency, so that the reference answers every request it is sent
    client = aioredis.Redis.from_url(SETTINGS.redis_url, decode_responses=True, max_connections=POOL_SIZE)
    await client.script_load(SCRIPTS.set_reaction.text)  # so that every request is one EVALSHA
    pool = db.LazyPool(SETTINGS)
    app.state.redis = client
    app.state.store = Store(SETTINGS, client, SCRIPTS, pool, Metrics(roles=()))
    try:
        yield
    finally:
        await client.aclose()
        await pool.close()


app = Starlette(
    routes=[
        Route("/api/v1/content/{contentId}/like", _endpoint("like"), methods=["POST"]),
        Route("/api/v1/content/{contentId}/like", _endpoint("unlike"), methods=["DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    lifespan=lifespan,
)


def serve(host: str, port: int) -> None:
    """Serve :data:`app` with the options ``engagementd api`` gives granian (daemon/proc/server.py)."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "loadtest.naive_likes_app:app",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        log_access=False,
        backlog=2048,
        websockets=False,
    ).serve()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve the naive like endpoint like engagementd api.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    ns = parser.parse_args()
    serve(ns.host, ns.port)
