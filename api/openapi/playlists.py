"""Spec of api/playlists.py: the caller's playlists and their ordered items."""

from __future__ import annotations

from api import playlists
from api.openapi.comments import trimmed_text
from api.openapi.components import (
    AUTH_REQUIRED,
    JSON_BODY_400,
    JSON_BODY_422,
    NEXT_CURSOR,
    NOT_FOUND,
    TOKEN_ERRORS,
    Schema,
    json_content,
    ok,
    operation,
    page_schema,
    ref,
)
from api.pagination import MAX_ID
from daemon.settings import Settings

TAGS = ["playlists"]
_UNAVAILABLE = "503 `unavailable`: Postgres is unreachable."
_BODY_LIMIT = f"At most {playlists.BODY_MAX_BYTES} bytes of body."
_WRITE_422 = ("invalid_playlist_id", *JSON_BODY_422)
_PLAYLIST_404 = (*NOT_FOUND, "playlist_not_found")  # also another user's playlist
_ITEM_404 = (*_PLAYLIST_404, "item_not_found")
_REPLAYED = {"Idempotent-Replayed": ref("headers", "Idempotent-Replayed")}
_NAME = {
    "type": "string",
    "pattern": trimmed_text(1, playlists.NAME_MAX_LEN, "\\x00"),
    "description": f"Trimmed (Unicode whitespace), 1 to {playlists.NAME_MAX_LEN} characters, no NUL.",
}
_DESCRIPTION = {
    "type": "string",
    "pattern": trimmed_text(0, playlists.DESCRIPTION_MAX_LEN, "\\x00"),
    "description": f"Trimmed, at most {playlists.DESCRIPTION_MAX_LEN} characters, no NUL.",
}
_TIME = {"type": "string", "format": "date-time"}
_PLAYLIST_PROPERTIES: Schema = {
    "playlist_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "name": {"type": "string"},
    "description": {"type": "string"},
    "item_count": ref("schemas", "Count"),
    "created_at": _TIME,
    "updated_at": {**_TIME, "description": "Bumped by every change, items included."},
}
_PLAYLIST = {
    "type": "object",
    "required": list(_PLAYLIST_PROPERTIES),
    "properties": _PLAYLIST_PROPERTIES,
    "additionalProperties": False,
}
_ITEM_PROPERTIES: Schema = {
    "content_id": ref("schemas", "Id"),
    "position": {"type": "integer", "minimum": 0, "description": "Dense from 0 within the playlist."},
    "added_at": _TIME,
}
_ITEM = {
    "type": "object",
    "required": list(_ITEM_PROPERTIES),
    "properties": _ITEM_PROPERTIES,
    "additionalProperties": False,
}
_PLACED_PROPERTIES: Schema = {
    "playlist_id": _PLAYLIST_PROPERTIES["playlist_id"],
    **_ITEM_PROPERTIES,
    "item_count": ref("schemas", "Count"),
}
_PLACED = {
    "type": "object",
    "required": list(_PLACED_PROPERTIES),
    "properties": _PLACED_PROPERTIES,
    "additionalProperties": False,
}
_WITH_ITEMS = {
    "type": "object",
    "required": [*_PLAYLIST_PROPERTIES, "items", "next_cursor"],
    "properties": {
        **_PLAYLIST_PROPERTIES,
        "items": {"type": "array", "items": _ITEM},
        "next_cursor": NEXT_CURSOR,
    },
    "additionalProperties": False,
}
_PLAYLIST_LINKS = {
    "getIt": {"operationId": "getPlaylist", "parameters": {"playlistId": "$response.body#/playlist_id"}},
    "addAnItem": {
        "operationId": "addPlaylistItem",
        "parameters": {"playlistId": "$response.body#/playlist_id"},
    },
    "renameIt": {
        "operationId": "updatePlaylist",
        "parameters": {"playlistId": "$response.body#/playlist_id"},
    },
    "deleteIt": {
        "operationId": "deletePlaylist",
        "parameters": {"playlistId": "$response.body#/playlist_id"},
    },
}
_ITEM_LINK_PARAMETERS = {
    "playlistId": "$response.body#/playlist_id",
    "contentId": "$response.body#/content_id",
}
_ITEM_LINKS = {
    "moveIt": {"operationId": "movePlaylistItem", "parameters": _ITEM_LINK_PARAMETERS},
    "removeIt": {"operationId": "removePlaylistItem", "parameters": _ITEM_LINK_PARAMETERS},
}


def _position(description: str, nullable: bool = False) -> Schema:
    return {
        "type": ["integer", "null"] if nullable else "integer",
        "minimum": 0,
        "description": f"{description} A position past the end is a 422 `invalid_position`.",
    }


def paths(settings: Settings) -> dict[str, dict[str, Schema]]:
    create = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": _NAME, "description": {**_DESCRIPTION, "default": ""}},
        "additionalProperties": False,
    }
    change = {
        "type": "object",
        "minProperties": 1,
        "properties": {"name": _NAME, "description": _DESCRIPTION},
        "additionalProperties": False,
    }
    add = {
        "type": "object",
        "required": ["content_id"],
        "properties": {
            "content_id": ref("schemas", "Id"),
            "position": _position("0 to the item count; null or absent: appended.", nullable=True),
        },
        "additionalProperties": False,
    }
    move = {
        "type": "object",
        "required": ["position"],
        "properties": {"position": _position("0 to the item count − 1.")},
        "additionalProperties": False,
    }
    playlist_id = ref("parameters", "playlistId")
    item_params = [playlist_id, ref("parameters", "contentId")]
    return {
        playlists.PLAYLISTS_ROUTE: {
            "post": operation(
                "createPlaylist",
                "Create a playlist",
                description="Rate-limited as `playlist`. 409 `too_many_playlists`: the caller has "
                f"{settings.playlists_max_per_user} (ENGAGEMENT_PLAYLISTS_MAX_PER_USER). With an "
                "Idempotency-Key (scoped to the user), a retry gets the first answer and creates "
                f"nothing. {_UNAVAILABLE} {_BODY_LIMIT}",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "Idempotency-Key")],
                body={"required": True, "content": json_content(create)},
                responses={201: {**ok("The playlist.", _PLAYLIST, _REPLAYED), "links": _PLAYLIST_LINKS}},
                errors={
                    400: (*JSON_BODY_400, "invalid_idempotency_key"),
                    401: TOKEN_ERRORS,
                    409: ("too_many_playlists",),
                    413: ("body_too_large",),
                    422: (*JSON_BODY_422, "invalid_name", "invalid_description", "idempotency_key_reused"),
                    429: ("rate_limited",),
                    503: ("unavailable",),
                },
            ),
            "get": operation(
                "listPlaylists",
                "The caller's playlists, newest first",
                description=_UNAVAILABLE,
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[ref("parameters", "limit"), ref("parameters", "cursor")],
                responses={200: ok("One page.", page_schema(_PLAYLIST))},
                errors={
                    400: ("invalid_cursor",),
                    401: TOKEN_ERRORS,
                    422: ("invalid_limit",),
                    503: ("unavailable",),
                },
            ),
        },
        playlists.PLAYLIST_ROUTE: {
            "get": operation(
                "getPlaylist",
                "A playlist and one page of its items, in order",
                description=_UNAVAILABLE,
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[playlist_id, ref("parameters", "itemsLimit"), ref("parameters", "cursor")],
                responses={200: ok("The playlist with `items` and `next_cursor`.", _WITH_ITEMS)},
                errors={
                    400: ("invalid_cursor",),
                    401: TOKEN_ERRORS,
                    404: _PLAYLIST_404,
                    422: ("invalid_playlist_id", "invalid_limit"),
                    503: ("unavailable",),
                },
            ),
            "patch": operation(
                "updatePlaylist",
                "Rename a playlist or change its description",
                description=f"At least one field. Rate-limited as `playlist`. {_UNAVAILABLE} {_BODY_LIMIT}",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[playlist_id],
                body={"required": True, "content": json_content(change)},
                responses={200: ok("The playlist.", _PLAYLIST)},
                errors={
                    400: JSON_BODY_400,
                    401: TOKEN_ERRORS,
                    404: _PLAYLIST_404,
                    413: ("body_too_large",),
                    422: (*_WRITE_422, "invalid_name", "invalid_description"),
                    429: ("rate_limited",),
                    503: ("unavailable",),
                },
            ),
            "delete": operation(
                "deletePlaylist",
                "Delete a playlist and its items",
                description=f"Rate-limited as `playlist`. {_UNAVAILABLE}",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[playlist_id],
                responses={204: ok("Deleted (empty body).")},
                errors={
                    401: TOKEN_ERRORS,
                    404: _PLAYLIST_404,
                    422: ("invalid_playlist_id",),
                    429: ("rate_limited",),
                    503: ("unavailable",),
                },
            ),
        },
        playlists.ITEMS_ROUTE: {
            "post": operation(
                "addPlaylistItem",
                "Add an item to a playlist",
                description="Inserted at `position` (the items from there move down one), appended by "
                "default. 409 `item_exists` (with its `position`): adding is not silently idempotent; "
                "retry with an Idempotency-Key. 409 `too_many_items`: the playlist holds "
                f"{settings.playlist_items_max} (ENGAGEMENT_PLAYLIST_ITEMS_MAX). Rate-limited as "
                f"`playlist`. Publishes `media_added_to_playlist`. {_UNAVAILABLE} {_BODY_LIMIT}",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=[playlist_id, ref("parameters", "Idempotency-Key")],
                body={"required": True, "content": json_content(add)},
                responses={201: {**ok("The item placed.", _PLACED, _REPLAYED), "links": _ITEM_LINKS}},
                errors={
                    400: (*JSON_BODY_400, "invalid_idempotency_key"),
                    401: TOKEN_ERRORS,
                    404: _PLAYLIST_404,
                    409: ("item_exists", "too_many_items"),
                    413: ("body_too_large",),
                    422: (*_WRITE_422, "invalid_content_id", "invalid_position", "idempotency_key_reused"),
                    429: ("rate_limited",),
                    503: ("unavailable",),
                },
            )
        },
        playlists.ITEM_ROUTE: {
            "patch": operation(
                "movePlaylistItem",
                "Move an item to another position",
                description="The items in between shift by one. Rate-limited as `playlist`. "
                f"{_UNAVAILABLE} {_BODY_LIMIT}",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=item_params,
                body={"required": True, "content": json_content(move)},
                responses={200: ok("The item at its new position.", _PLACED)},
                errors={
                    400: JSON_BODY_400,
                    401: TOKEN_ERRORS,
                    404: _ITEM_404,
                    413: ("body_too_large",),
                    422: (*_WRITE_422, "invalid_content_id", "invalid_position"),
                    429: ("rate_limited",),
                    503: ("unavailable",),
                },
            ),
            "delete": operation(
                "removePlaylistItem",
                "Remove an item from a playlist",
                description=f"The items after it move up one. Rate-limited as `playlist`. {_UNAVAILABLE}",
                tags=TAGS,
                security=AUTH_REQUIRED,
                parameters=item_params,
                responses={204: ok("Removed (empty body).")},
                errors={
                    401: TOKEN_ERRORS,
                    404: _ITEM_404,
                    422: ("invalid_playlist_id", "invalid_content_id"),
                    429: ("rate_limited",),
                    503: ("unavailable",),
                },
            ),
        },
    }
