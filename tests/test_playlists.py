"""Playlists over HTTP: CRUD, a dense order under inserts, moves, removals and concurrent adds, privacy,
limits, Idempotency-Key, and the media_added_to_playlist event read back from the Kafka mock cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import httpx
import orjson
import pytest
from kafka_fixtures import consume
from service_fixtures import API_TIMESTAMP, ApiProcess, token

from daemon.events import USER_ENGAGEMENT_EVENTS
from daemon.kafka_mock import MockCluster
from daemon.proc.servers import free_port
from daemon.settings import Settings

URL = "/api/v1/users/me/playlists"


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _create(api: ApiProcess, user: str, body: object, **headers: str) -> httpx.Response:
    return api.client.post(URL, json=body, headers={**_auth(user), **headers})


def _new(api: ApiProcess, user: str, name: str = "Watch later") -> int:
    r = _create(api, user, {"name": name})
    assert r.status_code == 201, r.text
    return r.json()["playlist_id"]


def _add(
    api: ApiProcess, user: str, pid: int, item: str, position: int | None = None, **headers: str
) -> httpx.Response:
    body: dict[str, object] = {"content_id": item}
    if position is not None:
        body["position"] = position
    return api.client.post(f"{URL}/{pid}/items", json=body, headers={**_auth(user), **headers})


def _move(api: ApiProcess, user: str, pid: int, item: str, position: int) -> httpx.Response:
    return api.client.patch(f"{URL}/{pid}/items/{item}", json={"position": position}, headers=_auth(user))


def _order(api: ApiProcess, user: str, pid: int, limit: int = 500) -> list[str]:
    """The items in order, read page by page; checks that positions are 0, 1, 2, ..."""
    items, cursor = [], None
    while True:
        params: dict[str, object] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        r = api.client.get(f"{URL}/{pid}", params=params, headers=_auth(user))
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [i["position"] for i in items] == list(range(len(items)))
    return [i["content_id"] for i in items]


def _positions_in_postgres(database_url: str, pid: int) -> list[tuple[int, str]]:
    async def fetch() -> list[tuple[int, str]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT position, content_id FROM playlist_items WHERE playlist_id = $1 ORDER BY position",
                pid,
            )
        finally:
            await conn.close()
        return [(r[0], r[1]) for r in rows]

    return asyncio.run(fetch())


def test_a_playlist_is_created_read_renamed_listed_and_deleted(api: ApiProcess) -> None:
    created = _create(api, "alice", {"name": "  Road trip  ", "description": " songs "})
    assert created.status_code == 201
    playlist = created.json()
    pid = playlist["playlist_id"]
    assert {k: playlist[k] for k in ("name", "description", "item_count")} == {
        "name": "Road trip",
        "description": "songs",
        "item_count": 0,
    }
    assert API_TIMESTAMP.fullmatch(playlist["created_at"]) and API_TIMESTAMP.fullmatch(playlist["updated_at"])
    got = api.client.get(f"{URL}/{pid}", headers=_auth("alice")).json()
    assert got == {**playlist, "items": [], "next_cursor": None}

    renamed = api.client.patch(f"{URL}/{pid}", json={"name": "Trip"}, headers=_auth("alice"))
    assert renamed.status_code == 200
    assert (renamed.json()["name"], renamed.json()["description"]) == ("Trip", "songs")
    assert (
        api.client.patch(f"{URL}/{pid}", json={"description": ""}, headers=_auth("alice")).json()[
            "description"
        ]
        == ""
    )
    assert _add(api, "alice", pid, "song-1").status_code == 201
    listed = api.client.get(URL, headers=_auth("alice")).json()
    assert [(p["playlist_id"], p["name"], p["item_count"]) for p in listed["items"]] == [(pid, "Trip", 1)]
    assert listed["next_cursor"] is None

    deleted = api.client.delete(f"{URL}/{pid}", headers=_auth("alice"))
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert api.client.get(f"{URL}/{pid}", headers=_auth("alice")).status_code == 404
    assert api.client.delete(f"{URL}/{pid}", headers=_auth("alice")).status_code == 404
    assert api.client.get(URL, headers=_auth("alice")).json() == {"items": [], "next_cursor": None}


def test_items_keep_a_dense_order_through_inserts_moves_and_removals(
    api: ApiProcess, migrated: Settings
) -> None:
    pid = _new(api, "bob")
    for item in ("a", "b", "c"):
        r = _add(api, "bob", pid, item)
        assert r.status_code == 201
    assert (r.json()["position"], r.json()["item_count"]) == (2, 3)
    assert _add(api, "bob", pid, "d", 0).json()["position"] == 0
    assert _add(api, "bob", pid, "e", 2).status_code == 201
    assert _add(api, "bob", pid, "f", 5).status_code == 201  # at the end, given explicitly
    assert _order(api, "bob", pid) == ["d", "a", "e", "b", "c", "f"]

    assert _move(api, "bob", pid, "c", 0).json()["position"] == 0
    assert _order(api, "bob", pid) == ["c", "d", "a", "e", "b", "f"]
    assert _move(api, "bob", pid, "c", 5).status_code == 200
    assert _order(api, "bob", pid) == ["d", "a", "e", "b", "f", "c"]
    assert _move(api, "bob", pid, "a", 3).status_code == 200
    assert _move(api, "bob", pid, "a", 3).status_code == 200  # to where it is: nothing moves
    assert _order(api, "bob", pid, limit=4) == ["d", "e", "b", "a", "f", "c"]

    removed = api.client.delete(f"{URL}/{pid}/items/e", headers=_auth("bob"))
    assert (removed.status_code, removed.content) == (204, b"")
    assert api.client.delete(f"{URL}/{pid}/items/e", headers=_auth("bob")).json()["error"] == "item_not_found"
    assert _order(api, "bob", pid, limit=2) == ["d", "b", "a", "f", "c"]
    assert _positions_in_postgres(migrated.database_url, pid) == list(enumerate(["d", "b", "a", "f", "c"]))

    for position, code in ((6, "invalid_position"), (-1, "invalid_position")):
        r = _add(api, "bob", pid, "z", position)
        assert (r.status_code, r.json()["error"]) == (422, code)
    assert _move(api, "bob", pid, "d", 5).json()["error"] == "invalid_position"
    assert _move(api, "bob", pid, "zz", 0).status_code == 404
    duplicate = _add(api, "bob", pid, "a")
    assert (duplicate.status_code, duplicate.json()["error"], duplicate.json()["position"]) == (
        409,
        "item_exists",
        2,
    )
    assert _order(api, "bob", pid) == ["d", "b", "a", "f", "c"]


def test_concurrent_adds_and_moves_keep_a_dense_order(api: ApiProcess, migrated: Settings) -> None:
    pid = _new(api, "carol")
    items = [f"clip-{i}" for i in range(40)]

    def add(i: int) -> int:
        with httpx.Client(base_url=api.base_url, timeout=30.0) as client:
            body: dict[str, object] = {"content_id": items[i]}
            if i % 3 == 0:
                body["position"] = 0
            return client.post(f"{URL}/{pid}/items", json=body, headers=_auth("carol")).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(add, range(40))) == [201] * 40

    def move(i: int) -> int:
        with httpx.Client(base_url=api.base_url, timeout=30.0) as client:
            url = f"{URL}/{pid}/items/{items[i]}"
            return client.patch(url, json={"position": (i * 7) % 40}, headers=_auth("carol")).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(move, range(0, 40, 2))) == [200] * 20

    order = _order(api, "carol", pid)
    assert sorted(order) == sorted(items)
    assert [p for p, _ in _positions_in_postgres(migrated.database_url, pid)] == list(range(40))


def test_other_users_playlists_are_invisible(api: ApiProcess) -> None:
    pid = _new(api, "dave", "Mine")
    assert _add(api, "dave", pid, "x").status_code == 201
    _new(api, "erin", "Hers")
    mallory = _auth("mallory")
    for method, path, body in (
        ("GET", f"{URL}/{pid}", None),
        ("PATCH", f"{URL}/{pid}", {"name": "pwned"}),
        ("DELETE", f"{URL}/{pid}", None),
        ("POST", f"{URL}/{pid}/items", {"content_id": "y"}),
        ("PATCH", f"{URL}/{pid}/items/x", {"position": 0}),
        ("DELETE", f"{URL}/{pid}/items/x", None),
        ("GET", f"{URL}/999999", None),
    ):
        r = api.client.request(method, path, json=body, headers=mallory)
        assert (r.status_code, r.json()["error"]) == (404, "playlist_not_found"), (method, path)
    assert api.client.get(URL, headers=mallory).json()["items"] == []
    assert [p["name"] for p in api.client.get(URL, headers=_auth("dave")).json()["items"]] == ["Mine"]
    assert _order(api, "dave", pid) == ["x"]


def test_the_playlist_list_is_paginated_newest_first(api: ApiProcess) -> None:
    ids = [_new(api, "frank", f"list {i}") for i in range(5)]
    pages, cursor = [], None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = api.client.get(URL, params=params, headers=_auth("frank")).json()
        pages.append([p["playlist_id"] for p in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [ids[::-1][0:2], ids[::-1][2:4], ids[::-1][4:]]
    for params, status, error in (
        ({"limit": 0}, 422, "invalid_limit"),
        ({"limit": 101}, 422, "invalid_limit"),
        ({"cursor": "nope!"}, 400, "invalid_cursor"),
        ({"cursor": "Ii0xIg"}, 400, "invalid_cursor"),  # "-1"
    ):
        r = api.client.get(URL, params=params, headers=_auth("frank"))
        assert (r.status_code, r.json()["error"]) == (status, error), params


def test_limits_and_bad_input_are_refused_with_clear_errors(
    start_api: Callable[..., ApiProcess], migrated: Settings
) -> None:
    api = start_api(migrated.replace(playlists_max_per_user=2, playlist_items_max=3))
    for name in ("", "   ", "x" * 201, 7, None):
        r = _create(api, "gina", {"name": name})
        assert (r.status_code, r.json()["error"]) == (422, "invalid_name"), name
    assert (
        _create(api, "gina", {"name": "x", "description": "d" * 1001}).json()["error"]
        == "invalid_description"
    )
    assert _create(api, "gina", {"name": "x", "colour": "red"}).json()["error"] == "unknown_field"
    not_json = api.client.post(URL, content=b"name=x", headers=_auth("gina"))
    assert (not_json.status_code, not_json.json()["error"]) == (400, "malformed_body")

    pid = _create(api, "gina", {"name": f"  {'n' * 200}  "}).json()["playlist_id"]
    assert _new(api, "gina", "second")
    third = _create(api, "gina", {"name": "third"})
    assert (third.status_code, third.json()["error"]) == (409, "too_many_playlists")
    for item in ("a", "b", "c"):
        assert _add(api, "gina", pid, item).status_code == 201
    full = _add(api, "gina", pid, "d")
    assert (full.status_code, full.json()["error"]) == (409, "too_many_items")

    assert api.client.get(f"{URL}/abc", headers=_auth("gina")).json()["error"] == "invalid_playlist_id"
    bad_item = _add(api, "gina", pid, "bad id")
    assert (bad_item.status_code, bad_item.json()["error"]) == (422, "invalid_content_id")
    assert _add(api, "gina", pid, "e", "1").json()["error"] == "invalid_position"  # type: ignore[arg-type]
    assert api.client.patch(f"{URL}/{pid}", json={}, headers=_auth("gina")).json()["error"] == "invalid_body"
    assert api.client.get(URL).json()["error"] == "missing_token"


def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_request(api: ApiProcess) -> None:
    first = _create(api, "hank", {"name": "Later"}, **{"Idempotency-Key": "k-1"})
    retry = _create(api, "hank", {"name": "Later"}, **{"Idempotency-Key": "k-1"})
    assert (retry.status_code, retry.json(), retry.headers["idempotent-replayed"]) == (
        201,
        first.json(),
        "true",
    )
    other = _create(api, "hank", {"name": "Other"}, **{"Idempotency-Key": "k-1"})
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    someone_else = _create(api, "ivy", {"name": "Later"}, **{"Idempotency-Key": "k-1"})
    assert someone_else.status_code == 201 and "idempotent-replayed" not in someone_else.headers
    assert len(api.client.get(URL, headers=_auth("hank")).json()["items"]) == 1

    pid = first.json()["playlist_id"]
    added = _add(api, "hank", pid, "a", **{"Idempotency-Key": "k-2"})
    again = _add(api, "hank", pid, "a", **{"Idempotency-Key": "k-2"})
    assert (again.status_code, again.json()) == (201, added.json())
    assert (
        _add(api, "hank", pid, "b", **{"Idempotency-Key": "k-2"}).json()["error"] == "idempotency_key_reused"
    )
    assert _order(api, "hank", pid) == ["a"]
    # A refused request keeps no answer: its retry runs again
    assert _add(api, "hank", 999999, "a", **{"Idempotency-Key": "k-3"}).status_code == 404
    assert _add(api, "hank", pid, "b", **{"Idempotency-Key": "k-3"}).status_code == 201
    bad_key = _create(api, "hank", {"name": "x"}, **{"Idempotency-Key": "has space"})
    assert (bad_key.status_code, bad_key.json()["error"]) == (400, "invalid_idempotency_key")


@pytest.fixture
def kafka_api(
    kafka_cluster: MockCluster, migrated: Settings, start_api: Callable[..., ApiProcess]
) -> ApiProcess:
    return start_api(migrated.replace(kafka_bootstrap=kafka_cluster.bootstrap_servers))


def test_adding_an_item_emits_media_added_to_playlist_once(
    kafka_api: ApiProcess, kafka_cluster: MockCluster
) -> None:
    internal = {"Authorization": f"Bearer {token('catalog', scope='internal')}"}
    registered = kafka_api.client.put(
        "/internal/v1/content/song-1",
        json={"creator_id": "band-1", "content_type": "AUDIO"},
        headers=internal,
    )
    assert registered.status_code == 200
    pid = _new(kafka_api, "jack")
    assert _add(kafka_api, "jack", pid, "song-1", **{"Idempotency-Key": "once"}).status_code == 201
    assert _add(kafka_api, "jack", pid, "song-1", **{"Idempotency-Key": "once"}).status_code == 201  # replay
    assert _add(kafka_api, "jack", pid, "song-1").status_code == 409  # already there
    assert _add(kafka_api, "jack", pid, "video-2").status_code == 201
    assert kafka_api.stop() == 0  # the producer delivers what is pending before the process exits

    records = consume(kafka_cluster.bootstrap_servers, USER_ENGAGEMENT_EVENTS, 2)
    payloads = sorted(
        (orjson.loads(value)["payload"] for _, value, _ in records), key=lambda p: p["content_id"]
    )
    assert [key for key, _, _ in records] == [b"jack", b"jack"]
    assert payloads == [
        {
            "user_id": "jack",
            "content_id": "song-1",
            "creator_id": "band-1",
            "event_type": "media_added_to_playlist",
            "watch_duration_seconds": None,
            "content_type": "AUDIO",
            "session_id": "",
        },
        {
            "user_id": "jack",
            "content_id": "video-2",
            "creator_id": "",
            "event_type": "media_added_to_playlist",
            "watch_duration_seconds": None,
            "content_type": "",
            "session_id": "",
        },
    ]


def test_while_postgres_is_down_playlist_requests_are_503(
    start_api: Callable[..., ApiProcess], migrated: Settings
) -> None:
    api = start_api(migrated.replace(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none"))
    for r in (
        _create(api, "kim", {"name": "x"}),
        api.client.get(URL, headers=_auth("kim")),
        _add(api, "kim", 1, "a"),
        api.client.delete(f"{URL}/1", headers=_auth("kim")),
    ):
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "unavailable", "1")


def test_a_nul_in_a_name_or_description_is_a_422_not_a_server_error(api: ApiProcess) -> None:
    # Found by schemathesis: Postgres text cannot hold a NUL, and the refused INSERT answered 503.
    assert _create(api, "olga", {"name": "a\x00b"}).json()["error"] == "invalid_name"
    r = _create(api, "olga", {"name": "ok", "description": "\n\r\x03B\x00y"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_description")
    pid = _new(api, "olga", "ok")
    for body, error in (
        ({"name": "\x00"}, "invalid_name"),
        ({"description": "x\x00"}, "invalid_description"),
    ):
        r = api.client.patch(f"{URL}/{pid}", json=body, headers=_auth("olga"))
        assert (r.status_code, r.json()["error"]) == (422, error), body
    assert api.client.get(f"{URL}/{pid}", headers=_auth("olga")).json()["name"] == "ok"
