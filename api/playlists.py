"""Playlists: /api/v1/users/me/playlists[/{playlistId}[/items[/{contentId}]]].

Postgres only (see daemon/playlist_store.py for the ordering and locking). A user sees only their own
playlists: any other playlist id answers 404, as an unknown one does. The two POSTs honour an
Idempotency-Key with records in Postgres (daemon/pg_idempotency.py), claimed in the request's own
transaction. Adding an item publishes ``media_added_to_playlist`` once it is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, json_response
from api.idempotency import idempotency_key
from api.ingest import integral, json_object
from api.instrument import instrumented
from api.pagination import MAX_ID, bad_cursor, cursor_param, encode_cursor, limit_param, positive_int
from api.reactions import check_rate
from api.services import Services
from daemon import pg_idempotency
from daemon import playlist_store as store
from daemon.errors import PG_ERRORS, KeyReused

log = logging.getLogger(__name__)

PLAYLISTS_ROUTE = "/api/v1/users/me/playlists"
PLAYLIST_ROUTE = "/api/v1/users/me/playlists/{playlistId}"
ITEMS_ROUTE = "/api/v1/users/me/playlists/{playlistId}/items"
ITEM_ROUTE = "/api/v1/users/me/playlists/{playlistId}/items/{contentId}"

NAME_MAX_LEN = 200
DESCRIPTION_MAX_LEN = 1000
BODY_MAX_BYTES = 16 * 1024
ITEMS_PAGE_DEFAULT, ITEMS_PAGE_MAX = 100, 500
POSITION_MAX = 2**31 - 1  # playlist_items.position is a Postgres integer

_CREATE_FIELDS = frozenset({"name", "description"})
_ADD_FIELDS = frozenset({"content_id", "position"})
_MOVE_FIELDS = frozenset({"position"})


# -- parsing --------------------------------------------------------------------------------------


def _name(value: Any) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not 1 <= len(name) <= NAME_MAX_LEN or "\x00" in name:  # (Postgres text cannot hold a NUL)
        raise ApiError(422, "invalid_name", f"name must be 1 to {NAME_MAX_LEN} characters (trimmed), no NUL.")
    return name


def _description(value: Any) -> str:
    if not isinstance(value, str) or len(value.strip()) > DESCRIPTION_MAX_LEN or "\x00" in value:
        raise ApiError(
            422,
            "invalid_description",
            f"description must be a string of at most {DESCRIPTION_MAX_LEN} characters, no NUL.",
        )
    return value.strip()


def _position(value: Any) -> int:
    value = integral(value)
    if type(value) is not int or value < 0:
        raise ApiError(422, "invalid_position", "position must be an integer of at least 0.")
    return value


def _playlist_id(request: Request) -> int:
    playlist_id = positive_int(request.path_params["playlistId"])
    if playlist_id is None:
        raise ApiError(422, "invalid_playlist_id", "playlistId must be a positive integer.")
    return playlist_id


async def _body(services: Services, request: Request, fields: frozenset[str]) -> dict[str, Any]:
    return json_object(await services.bodies.read_json(request, BODY_MAX_BYTES), fields)


# -- transactions ---------------------------------------------------------------------------------


async def _in_transaction(services: Services, work: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    """Run ``work`` in one transaction; ApiErrors roll back and pass through, Postgres failures are 503."""
    try:
        pool = await services.pool()
        async with pool.acquire() as conn, conn.transaction():
            return await work(conn)
    except PG_ERRORS as exc:
        log.warning("playlist request failed: Postgres unavailable (%s)", exc)
        raise services.unavailable("Playlists are temporarily unavailable.") from None


async def _idempotent_post(
    services: Services,
    request: Request,
    user_id: str,
    fingerprint: str,
    work: Callable[[asyncpg.Connection], Awaitable[dict[str, Any]]],
) -> tuple[dict[str, Any], bool]:
    """``work``'s answer (201), or the first answer to this Idempotency-Key; True when replayed."""
    key = idempotency_key(request)
    ttl = services.settings.idempotency_ttl_s

    async def run(conn: asyncpg.Connection) -> tuple[dict[str, Any], bool]:
        if key:
            replay = await pg_idempotency.claim(conn, user_id, key, fingerprint, ttl)
            if replay is not None:
                if not replay.same_request:
                    raise KeyReused()
                return replay.answer, True
        answer = await work(conn)
        if key:
            await pg_idempotency.remember(conn, user_id, key, 201, answer)
        return answer, False

    return await _in_transaction(services, run)


def _created(answer: dict[str, Any], replayed: bool) -> Response:
    return json_response(answer, 201, headers={"Idempotent-Replayed": "true"} if replayed else None)


# -- /playlists -----------------------------------------------------------------------------------


@instrumented(PLAYLISTS_ROUTE)
async def create_playlist(request: Request) -> Response:
    services: Services = request.app.state.services
    user = services.auth.require(request.headers.get("authorization")).sub
    idempotency_key(request)  # a malformed key is a 400 before the body is read
    doc = await _body(services, request, _CREATE_FIELDS)
    name = _name(doc.get("name"))
    description = _description(doc.get("description", ""))
    key = idempotency_key(request)
    await check_rate(services, "playlist", user, f"create|{key}" if key else None)
    limit = services.settings.playlists_max_per_user
    answer, replayed = await _idempotent_post(
        services,
        request,
        user,
        f"create|{name}|{description}",
        lambda conn: store.create(conn, user, name, description, limit),
    )
    return _created(answer, replayed)


@instrumented(PLAYLISTS_ROUTE)
async def list_playlists(request: Request) -> Response:
    services: Services = request.app.state.services
    user = services.auth.require(request.headers.get("authorization")).sub
    limit = limit_param(request)
    before = cursor_param(request)
    if before is not None and (type(before) is not int or not 1 <= before <= MAX_ID):
        raise bad_cursor()
    items, last = await _in_transaction(services, lambda conn: store.list_page(conn, user, before, limit))
    return json_response({"items": items, "next_cursor": None if last is None else encode_cursor(last)})


# -- /playlists/{playlistId} ----------------------------------------------------------------------


@instrumented(PLAYLIST_ROUTE)
async def get_playlist(request: Request) -> Response:
    """The playlist and one page of its items in order (``?limit=``, ``?cursor=``)."""
    services: Services = request.app.state.services
    user = services.auth.require(request.headers.get("authorization")).sub
    playlist_id = _playlist_id(request)
    limit = limit_param(request, ITEMS_PAGE_DEFAULT, ITEMS_PAGE_MAX)
    after = cursor_param(request)
    if after is not None and (type(after) is not int or not 0 <= after <= POSITION_MAX):
        raise bad_cursor()
    body = await _in_transaction(
        services, lambda conn: store.get(conn, user, playlist_id, -1 if after is None else after, limit)
    )
    last = body.pop("last_position")
    body["next_cursor"] = None if last is None else encode_cursor(last)
    return json_response(body)


@instrumented(PLAYLIST_ROUTE)
async def update_playlist(request: Request) -> Response:
    services: Services = request.app.state.services
    user = services.auth.require(request.headers.get("authorization")).sub
    playlist_id = _playlist_id(request)
    doc = await _body(services, request, _CREATE_FIELDS)
    if not doc:
        raise ApiError(422, "invalid_body", "Give name, description or both.")
    name = _name(doc["name"]) if "name" in doc else None
    description = _description(doc["description"]) if "description" in doc else None
    await check_rate(services, "playlist", user, None)
    answer = await _in_transaction(
        services, lambda conn: store.update(conn, user, playlist_id, name, description)
    )
    return json_response(answer)


@instrumented(PLAYLIST_ROUTE)
async def delete_playlist(request: Request) -> Response:
    services: Services = request.app.state.services
    user = services.auth.require(request.headers.get("authorization")).sub
    playlist_id = _playlist_id(request)
    await check_rate(services, "playlist", user, None)
    await _in_transaction(services, lambda conn: store.delete(conn, user, playlist_id))
    return Response(status_code=204)


# -- /playlists/{playlistId}/items ----------------------------------------------------------------


@instrumented(ITEMS_ROUTE)
async def add_item(request: Request) -> Response:
    services: Services = request.app.state.services
    user = services.auth.require(request.headers.get("authorization")).sub
    playlist_id = _playlist_id(request)
    idempotency_key(request)
    doc = await _body(services, request, _ADD_FIELDS)
    content_id = doc.get("content_id")
    if not isinstance(content_id, str):
        raise ApiError(422, "invalid_content_id", "content_id must be a valid id string.")
    services.bodies.content_id(content_id)
    position = _position(doc["position"]) if doc.get("position") is not None else None
    key = idempotency_key(request)  # a retry with the same key takes no second place in the window
    await check_rate(services, "playlist", user, f"add|{playlist_id}|{key}" if key else None)
    max_items = services.settings.playlist_items_max
    answer, replayed = await _idempotent_post(
        services,
        request,
        user,
        f"add|{playlist_id}|{content_id}|{position}",
        lambda conn: store.add_item(conn, user, playlist_id, content_id, position, max_items),
    )
    if not replayed and services.events is not None:
        services.events.added_to_playlist(user, content_id)
    return _created(answer, replayed)


@instrumented(ITEM_ROUTE)
async def move_item(request: Request) -> Response:
    services: Services = request.app.state.services
    user = services.auth.require(request.headers.get("authorization")).sub
    playlist_id = _playlist_id(request)
    content_id = services.bodies.content_id(request.path_params["contentId"])
    doc = await _body(services, request, _MOVE_FIELDS)
    position = _position(doc.get("position"))
    await check_rate(services, "playlist", user, None)
    answer = await _in_transaction(
        services, lambda conn: store.move_item(conn, user, playlist_id, content_id, position)
    )
    return json_response(answer)


@instrumented(ITEM_ROUTE)
async def remove_item(request: Request) -> Response:
    services: Services = request.app.state.services
    user = services.auth.require(request.headers.get("authorization")).sub
    playlist_id = _playlist_id(request)
    content_id = services.bodies.content_id(request.path_params["contentId"])
    await check_rate(services, "playlist", user, None)
    await _in_transaction(services, lambda conn: store.remove_item(conn, user, playlist_id, content_id))
    return Response(status_code=204)
