"""The list endpoints (comments, watch history, playlists, a playlist's items) share one rule for their
query parameters: a ``limit`` out of range is a 422 ``invalid_limit``, a ``cursor`` that is not a
``next_cursor`` the same list returned is a 400 ``invalid_cursor`` (an opaque token the client did not
build; an empty ``cursor=`` is no cursor: the first page), and neither ever reaches the database as a
value it cannot hold."""

from __future__ import annotations

import base64
import zlib

from service_fixtures import ApiProcess, token

from api.pagination import encode_cursor

PLAYLISTS = "/api/v1/users/me/playlists"
HISTORY = "/api/v1/users/me/history"


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _lists(api: ApiProcess, user: str) -> dict[str, int]:
    """Each list's path and its largest limit."""
    created = api.client.post(PLAYLISTS, json={"name": "p"}, headers=_auth(user))
    assert created.status_code == 201, created.text
    return {
        "/api/v1/content/video-1/comments": 100,
        HISTORY: 100,
        PLAYLISTS: 100,
        f"{PLAYLISTS}/{created.json()['playlist_id']}": 500,
    }


def test_every_list_refuses_a_bad_limit_with_422_and_a_bad_cursor_with_400(api: ApiProcess) -> None:
    for path, maximum in _lists(api, "lena").items():
        # 4,301 digits: int() would raise on it (a 500 before), so it is refused by its length
        for limit in ("0", str(maximum + 1), "ten", "-1", "", "1" * 4301):
            r = api.client.get(path, params={"limit": limit}, headers=_auth("lena"))
            assert (r.status_code, r.json()["error"]) == (422, "invalid_limit"), (path, limit)
        assert api.client.get(path, params={"limit": maximum}, headers=_auth("lena")).status_code == 200
        for cursor in ("!!!", "not-a-cursor", "x" * 200, encode_cursor({}), encode_cursor("a")):
            r = api.client.get(path, params={"cursor": cursor}, headers=_auth("lena"))
            assert (r.status_code, r.json()["error"]) == (400, "invalid_cursor"), (path, cursor)
        first = api.client.get(path, headers=_auth("lena"))
        empty = api.client.get(path, params={"cursor": ""}, headers=_auth("lena"))  # `cursor=`: none
        assert (empty.status_code, empty.json()) == (200, first.json()), path


def test_a_cursor_with_values_the_database_cannot_hold_is_a_400_not_a_server_error(api: ApiProcess) -> None:
    # Each of these went into a query before: a time past year 9999 (a 500), a NUL in a history
    # content id, a playlist id beyond bigint and an item position beyond integer (503s).
    paths = _lists(api, "mona")
    playlist = next(p for p, maximum in paths.items() if maximum == 500)
    for path, value in [
        (HISTORY, [2**62 - 1, "film-1"]),
        (HISTORY, [1, "film\x001"]),
        (HISTORY, [1, "not an id"]),
        (PLAYLISTS, 2**63),
        (playlist, 2**31),
    ]:
        r = api.client.get(path, params={"cursor": encode_cursor(value)}, headers=_auth("mona"))
        assert (r.status_code, r.json()["error"]) == (400, "invalid_cursor"), (path, value)
    # A comments cursor of this very listing (its scope matches) whose comment id is beyond bigint
    scope = zlib.crc32(b"video-1|")
    raw = f"1700000000000000.{2**63}.{scope}".encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = api.client.get("/api/v1/content/video-1/comments", params={"cursor": cursor})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_cursor")


def test_a_playlist_id_of_thousands_of_digits_is_a_422_not_a_server_error(api: ApiProcess) -> None:
    huge = "9" * 4301
    for method, path in [
        ("GET", f"{PLAYLISTS}/{huge}"),
        ("DELETE", f"{PLAYLISTS}/{huge}"),
        ("DELETE", f"{PLAYLISTS}/{huge}/items/film-1"),
        ("GET", f"{PLAYLISTS}/{2**63}"),
    ]:
        r = api.client.request(method, path, headers=_auth("nina"))
        assert (r.status_code, r.json()["error"]) == (422, "invalid_playlist_id"), (method, path[:60])
