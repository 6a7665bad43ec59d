"""A creator's totals and the read side's lists (api/reads.py): exact after known writes and a flush;
every list pages through each record once, newest first; bad input gets a specific 4xx."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from service_fixtures import ApiProcess, run_flusher_once, token, wait_until

from daemon.proc.servers import RedisServer
from daemon.settings import Settings


def _auth(user: str, scope: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, scope=scope)}"}


def _ok(r: httpx.Response) -> Any:
    assert r.status_code in (200, 201, 202), r.text
    return r.json() if r.content else None


def _register(api: ApiProcess, content_id: str, creator: str) -> None:
    body = {"creator_id": creator, "content_type": "VIDEO"}
    _ok(api.client.put(f"/internal/v1/content/{content_id}", json=body, headers=_auth("ops", "internal")))


def _all_pages(api: ApiProcess, path: str, user: str, scope: str = "") -> list[dict[str, str]]:
    """Every item of a list, two per page, following next_cursor."""
    items: list[dict[str, str]] = []
    cursor = None
    for _ in range(50):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = _ok(api.client.get(path, params=params, headers=_auth(user, scope)))
        assert len(page["items"]) <= 2
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("a list that never ends")


def _writes(api: ApiProcess) -> None:
    """cr-1 owns rd-a, rd-b (registered first) and rd-late (viewed before it was registered); cr-2 owns
    rd-c. Views: rd-a 2 (10 s each), rd-b 1, rd-late 3, rd-c 1. u1 likes rd-a, rd-b, rd-late; u2
    dislikes rd-a; u1 shares rd-b; u1 subscribes to cr-1 and cr-2, u2 to cr-1."""
    _register(api, "rd-a", "cr-1")
    _register(api, "rd-b", "cr-1")
    _register(api, "rd-c", "cr-2")
    for content_id, n, seconds in (("rd-a", 2, 10), ("rd-b", 1, 0), ("rd-late", 3, 0), ("rd-c", 1, 0)):
        for _ in range(n):
            body = {"watch_seconds": seconds} if seconds else None
            assert api.client.post(f"/api/v1/content/{content_id}/views", json=body).status_code == 202
    for content_id in ("rd-a", "rd-b", "rd-late"):
        _ok(api.client.post(f"/api/v1/content/{content_id}/like", headers=_auth("u1")))
    _ok(api.client.post("/api/v1/content/rd-a/dislike", headers=_auth("u2")))
    _ok(api.client.post("/api/v1/content/rd-b/shares", json={"platform": "x"}, headers=_auth("u1")))
    for user, creator in (("u1", "cr-1"), ("u1", "cr-2"), ("u2", "cr-1")):
        _ok(api.client.post(f"/api/v1/creators/{creator}/subscribe", headers=_auth(user)))


def test_creator_totals_and_lists_are_exact_after_a_flush(
    migrated: Settings, start_api: Callable[..., ApiProcess], redis_back: RedisServer
) -> None:
    settings = migrated.replace(buffer_flush_interval_ms=20)
    api = start_api(settings)
    _writes(api)

    def viewed() -> bool:
        return api.client.get("/api/v1/content/rd-late/stats").json()["views"] == 3

    wait_until(viewed, 10, "the views to reach Redis")
    _register(api, "rd-late", "cr-1")  # after its views: they count for cr-1 too
    run_flusher_once(settings)

    # Then a creator's totals are the sums over the items the registry gives them
    assert _ok(api.client.get("/api/v1/creators/cr-1/stats")) == {
        "creator_id": "cr-1",
        "subscribers": 2,
        "content_count": 3,
        "views": 6,
        "likes": 3,
        "dislikes": 1,
        "comments": 0,
        "shares": 1,
        "watch_seconds": 20,
    }
    assert _ok(api.client.get("/api/v1/creators/cr-2/stats"))["views"] == 1
    nobody = _ok(api.client.get("/api/v1/creators/cr-none/stats"))
    assert nobody == {"creator_id": "cr-none", **dict.fromkeys(("subscribers", "content_count", "views",
                      "likes", "dislikes", "comments", "shares", "watch_seconds"), 0)}  # fmt: skip

    # And the lists hold every record once: one flush wrote them all (same created_at: by id, descending)
    likes = _all_pages(api, "/api/v1/users/me/likes", "u1")
    assert [e["content_id"] for e in likes] == ["rd-late", "rd-b", "rd-a"]
    assert _all_pages(api, "/api/v1/users/me/likes", "u2") == []  # a dislike is not a like
    subscriptions = _all_pages(api, "/api/v1/users/me/subscriptions", "u1")
    assert [e["creator_id"] for e in subscriptions] == ["cr-2", "cr-1"]
    subscribers = _all_pages(api, "/api/v1/creators/cr-1/subscribers", "cr-1")
    assert [e["user_id"] for e in subscribers] == ["u2", "u1"]
    assert _all_pages(api, "/api/v1/creators/cr-1/subscribers", "ops", "internal") == subscribers

    # When u1 likes one more item later, and unlikes rd-b
    _ok(api.client.post("/api/v1/content/rd-c/like", headers=_auth("u1")))
    _ok(api.client.delete("/api/v1/content/rd-b/like", headers=_auth("u1")))
    run_flusher_once(settings)

    # Then the newest comes first and the unliked is gone
    likes = _all_pages(api, "/api/v1/users/me/likes", "u1")
    assert [e["content_id"] for e in likes] == ["rd-c", "rd-late", "rd-a"]

    # And with Redis stopped, the totals and lists (Postgres's) are the same
    totals = _ok(api.client.get("/api/v1/creators/cr-1/stats"))
    redis_back.stop()
    assert _ok(api.client.get("/api/v1/creators/cr-1/stats")) == totals
    assert _all_pages(api, "/api/v1/users/me/likes", "u1") == likes


def test_lists_refuse_bad_input_and_other_users(api: ApiProcess) -> None:
    page = api.client.get("/api/v1/users/me/likes", params={"limit": "1"}, headers=_auth("u9"))
    assert page.json() == {"items": [], "next_cursor": None}
    cases = [
        ("/api/v1/users/me/likes", {}, {}, 401, "missing_token"),
        ("/api/v1/users/me/likes", {"limit": "0"}, _auth("u9"), 422, "invalid_limit"),
        ("/api/v1/users/me/likes", {"cursor": "not-a-cursor"}, _auth("u9"), 400, "invalid_cursor"),
        ("/api/v1/creators/cr-1/subscribers", {}, _auth("u9"), 403, "not_your_creator"),
        ("/api/v1/creators/bad id/subscribers", {}, _auth("u9"), 422, "invalid_creator_id"),
        ("/api/v1/creators/bad id/stats", {}, {}, 422, "invalid_creator_id"),
    ]
    for path, params, headers, status, code in cases:
        r = api.client.get(path, params=params, headers=headers)
        assert (r.status_code, r.json()["error"]) == (status, code), (path, r.text)


def test_a_cursor_of_another_list_is_refused(
    migrated: Settings, start_api: Callable[..., ApiProcess]
) -> None:
    api = start_api(migrated)
    for content_id in ("cu-1", "cu-2", "cu-3"):
        _ok(api.client.post(f"/api/v1/content/{content_id}/like", headers=_auth("u1")))
    run_flusher_once(migrated)
    first = _ok(api.client.get("/api/v1/users/me/likes", params={"limit": "1"}, headers=_auth("u1")))
    cursor = first["next_cursor"]
    assert cursor is not None
    for path, user in (("/api/v1/users/me/likes", "u2"), ("/api/v1/users/me/subscriptions", "u1")):
        r = api.client.get(path, params={"cursor": cursor}, headers=_auth(user))
        assert (r.status_code, r.json()["error"]) == (400, "invalid_cursor"), path
