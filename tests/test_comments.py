"""Comments and replies: posted, listed by keyset cursor, soft deleted by the author or the creator,
counted once in Redis and in content_counters.comments; a retry with an Idempotency-Key is applied once."""

from __future__ import annotations

import asyncio
import threading

import httpx
from service_fixtures import (
    API_TIMESTAMP,
    ApiProcess,
    counters_in_postgres,
    fetch,
    run_flusher_once,
    token,
    wait_until,
)

from daemon.settings import Settings


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _post(api: ApiProcess, item: str, user: str, body: object, **headers: str) -> httpx.Response:
    return api.client.post(f"/api/v1/content/{item}/comments", json=body, headers={**_auth(user), **headers})


def _comment(api: ApiProcess, item: str, user: str, text: str, parent: int | None = None) -> dict:
    body: dict[str, object] = {"body": text}
    if parent is not None:
        body["parent_comment_id"] = parent
    r = _post(api, item, user, body)
    assert r.status_code == 201, r.text
    return r.json()


def _list(api: ApiProcess, item: str, **params: object) -> dict:
    r = api.client.get(f"/api/v1/content/{item}/comments", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _delete(api: ApiProcess, item: str, comment_id: object, user: str) -> httpx.Response:
    return api.client.delete(f"/api/v1/content/{item}/comments/{comment_id}", headers=_auth(user))


def _comments_stat(api: ApiProcess, item: str) -> int:
    return api.client.get(f"/api/v1/content/{item}/stats").json()["comments"]


def _register(api: ApiProcess, item: str, creator: str) -> None:
    r = api.client.put(
        f"/internal/v1/content/{item}",
        json={"creator_id": creator, "content_type": "VIDEO"},
        headers={"Authorization": f"Bearer {token('registry', scope='internal')}"},
    )
    assert r.status_code == 200, r.text


def test_a_comment_is_answered_listed_newest_first_and_counted_once(
    api: ApiProcess, migrated: Settings
) -> None:
    # When three comments are posted on an item (the body trimmed) and one on another
    first = _post(api, "clip-1", "alice", {"body": "  first!  "})
    assert first.status_code == 201
    created = first.json()
    assert created == {
        "comment_id": created["comment_id"],
        "content_id": "clip-1",
        "user_id": "alice",
        "parent_comment_id": None,
        "body": "first!",
        "created_at": created["created_at"],
        "reply_count": 0,
        "deleted": False,
    }
    assert API_TIMESTAMP.fullmatch(created["created_at"]), created
    second = _comment(api, "clip-1", "bob", "second")
    third = _comment(api, "clip-1", "alice", "third")
    _comment(api, "clip-2", "bob", "elsewhere")

    # Then the item lists them newest first, with no further page
    listing = _list(api, "clip-1")
    assert [c["comment_id"] for c in listing["items"]] == [
        third["comment_id"],
        second["comment_id"],
        created["comment_id"],
    ]
    assert listing["items"][2] == created and listing["next_cursor"] is None

    # And the counts are exact live, and in Postgres after the flusher (once, even flushed twice)
    assert (_comments_stat(api, "clip-1"), _comments_stat(api, "clip-2")) == (3, 1)
    run_flusher_once(migrated)
    run_flusher_once(migrated)
    counters = counters_in_postgres(migrated.database_url)
    assert (counters["clip-1"]["comments"], counters["clip-2"]["comments"]) == (3, 1)


def test_a_reply_to_a_reply_joins_the_same_thread(api: ApiProcess, migrated: Settings) -> None:
    # Given a top-level comment with a reply
    top = _comment(api, "clip-3", "alice", "top")
    reply = _comment(api, "clip-3", "bob", "reply", parent=top["comment_id"])
    assert reply["parent_comment_id"] == top["comment_id"]

    # When someone replies to the reply
    nested = _comment(api, "clip-3", "carol", "reply to the reply", parent=reply["comment_id"])

    # Then it is attached to the top-level comment, whose reply_count counts both
    assert nested["parent_comment_id"] == top["comment_id"]
    listing = _list(api, "clip-3")
    assert [(c["comment_id"], c["reply_count"]) for c in listing["items"]] == [(top["comment_id"], 2)]
    thread = _list(api, "clip-3", parent_comment_id=top["comment_id"])
    assert [c["comment_id"] for c in thread["items"]] == [reply["comment_id"], nested["comment_id"]]
    assert _list(api, "clip-3", parent_comment_id=reply["comment_id"])["items"] == []
    assert _comments_stat(api, "clip-3") == 3
    run_flusher_once(migrated)
    assert counters_in_postgres(migrated.database_url)["clip-3"]["comments"] == 3


def test_bad_comments_are_refused_with_specific_errors_and_record_nothing(
    api: ApiProcess, migrated: Settings
) -> None:
    other = _comment(api, "clip-5", "bob", "on another item")
    cases = [
        (b"{not json", 400, "malformed_body"),
        (b"[]", 422, "invalid_body"),
        (b"{}", 422, "invalid_comment_body"),
        (b'{"body": 5}', 422, "invalid_comment_body"),
        (b'{"body": null}', 422, "invalid_comment_body"),
        (b'{"body": ""}', 422, "empty_comment_body"),
        (b'{"body": " \\n\\t "}', 422, "empty_comment_body"),
        (b'{"body": "' + b"x" * 10_001 + b'"}', 422, "comment_body_too_long"),
        (b'{"body": "a\\u0000b"}', 422, "invalid_comment_body"),
        (b'{"body": "x", "extra": 1}', 422, "unknown_field"),
        (b'{"body": "x", "parent_comment_id": "1"}', 422, "invalid_parent_comment_id"),
        (b'{"body": "x", "parent_comment_id": 0}', 422, "invalid_parent_comment_id"),
        (b'{"body": "x", "parent_comment_id": 1.5}', 422, "invalid_parent_comment_id"),
        (b'{"body": "x", "parent_comment_id": 9223372036854775808}', 422, "invalid_parent_comment_id"),
        (b'{"body": "x", "parent_comment_id": 999999}', 404, "parent_comment_not_found"),
        (
            b'{"body": "x", "parent_comment_id": %d}' % other["comment_id"],
            422,
            "parent_comment_other_content",
        ),
    ]
    for body, status, error in cases:
        r = api.client.post(
            "/api/v1/content/clip-4/comments",
            content=body,
            headers={**_auth("alice"), "Content-Type": "application/json"},
        )
        assert (r.status_code, r.json()["error"]) == (status, error), body[:60]
    r = api.client.post("/api/v1/content/clip-4/comments", json={"body": "x"})
    assert (r.status_code, r.json()["error"]) == (401, "missing_token")
    r = _post(api, "bad%20id", "alice", {"body": "x"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_content_id")

    # A deleted comment cannot be replied to
    gone = _comment(api, "clip-4", "alice", "soon gone")
    assert _delete(api, "clip-4", gone["comment_id"], "alice").status_code == 204
    r = _post(api, "clip-4", "bob", {"body": "late", "parent_comment_id": gone["comment_id"]})
    assert (r.status_code, r.json()["error"]) == (409, "parent_comment_deleted")

    # The longest body (after trimming) is fine
    longest = _post(api, "clip-4", "alice", {"body": "  " + "é" * 10_000 + "\n"})
    assert (longest.status_code, len(longest.json()["body"])) == (201, 10_000)
    rows = fetch(migrated.database_url, "SELECT count(*) AS n FROM comments WHERE content_id = 'clip-4'")
    assert rows[0]["n"] == 2
    assert _comments_stat(api, "clip-4") == 1


def test_bad_limits_cursors_and_threads_are_refused(api: ApiProcess) -> None:
    top = _comment(api, "clip-6", "alice", "top")
    _comment(api, "clip-6", "alice", "second")
    cursor = _list(api, "clip-6", limit=1)["next_cursor"]
    assert cursor is not None
    for params, status, error in [
        ({"limit": "0"}, 422, "invalid_limit"),
        ({"limit": "101"}, 422, "invalid_limit"),
        ({"limit": "ten"}, 422, "invalid_limit"),
        ({"limit": "-1"}, 422, "invalid_limit"),
        ({"cursor": "not-a-cursor"}, 400, "invalid_cursor"),
        ({"cursor": "!!!"}, 400, "invalid_cursor"),
        ({"cursor": "x" * 200}, 400, "invalid_cursor"),
        ({"cursor": cursor, "parent_comment_id": top["comment_id"]}, 400, "invalid_cursor"),
        ({"parent_comment_id": "abc"}, 422, "invalid_parent_comment_id"),
        ({"parent_comment_id": "999999"}, 404, "parent_comment_not_found"),
    ]:
        r = api.client.get("/api/v1/content/clip-6/comments", params=params)
        assert (r.status_code, r.json()["error"]) == (status, error), params
    r = api.client.get("/api/v1/content/clip-7/comments", params={"cursor": cursor})  # another item's
    assert (r.status_code, r.json()["error"]) == (400, "invalid_cursor")
    assert _list(api, "clip-6", limit=1, cursor=cursor)["items"][0]["comment_id"] == top["comment_id"]


def test_pages_stay_correct_while_comments_arrive(api: ApiProcess, migrated: Settings) -> None:
    # Given 60 comments
    existing = [_comment(api, "viral", f"u{i % 7}", f"comment {i}")["comment_id"] for i in range(60)]

    # When a second client posts comments while the first pages through with small pages
    stop = threading.Event()
    added: list[int] = []

    def writer() -> None:
        with httpx.Client(base_url=api.base_url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                r = client.post(
                    "/api/v1/content/viral/comments", json={"body": f"new {n}"}, headers=_auth(f"w{n}")
                )
                assert r.status_code == 201, r.text
                added.append(r.json()["comment_id"])
                n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[int] = []
    try:
        wait_until(lambda: len(added) > 0, what="the second client's first comment")
        cursor = None
        while True:
            params: dict[str, object] = {"limit": 7}
            if cursor:
                params["cursor"] = cursor
            page = _list(api, "viral", **params)
            seen += [c["comment_id"] for c in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            _comment(api, "viral", "paging-user", "posted between pages")
    finally:
        stop.set()
        thread.join()

    # Then every comment that existed is seen exactly once, newest first; none twice
    assert len(seen) == len(set(seen))
    assert [c for c in seen if c in set(existing)] == existing[::-1]
    rows = fetch(migrated.database_url, "SELECT count(*) AS n FROM comments WHERE content_id = 'viral'")
    assert _comments_stat(api, "viral") == rows[0]["n"]


def test_only_the_author_or_the_creator_may_delete_and_the_thread_keeps_its_shape(
    api: ApiProcess, migrated: Settings
) -> None:
    # Given an item created by studio-1, a thread of alice with replies of bob and carol
    _register(api, "clip-8", "studio-1")
    top = _comment(api, "clip-8", "alice", "top")
    bob = _comment(api, "clip-8", "bob", "bob's reply", parent=top["comment_id"])
    carol = _comment(api, "clip-8", "carol", "carol's reply", parent=top["comment_id"])
    assert _comments_stat(api, "clip-8") == 3

    # When someone else tries, then 403; unknown or other-item ids are 404; bad ids 422
    r = _delete(api, "clip-8", top["comment_id"], "mallory")
    assert (r.status_code, r.json()["error"]) == (403, "delete_not_allowed")
    r = _delete(api, "clip-8", bob["comment_id"], "alice")  # the thread's author is not the reply's
    assert (r.status_code, r.json()["error"]) == (403, "delete_not_allowed")
    assert _delete(api, "clip-8", 999999, "alice").json()["error"] == "comment_not_found"
    assert _delete(api, "clip-9", top["comment_id"], "alice").status_code == 404
    assert _delete(api, "clip-8", "abc", "alice").json()["error"] == "invalid_comment_id"
    assert api.client.delete(f"/api/v1/content/clip-8/comments/{top['comment_id']}").status_code == 401

    # When the author deletes the top comment (twice) and the creator deletes carol's reply
    assert _delete(api, "clip-8", top["comment_id"], "alice").status_code == 204
    assert _delete(api, "clip-8", top["comment_id"], "alice").status_code == 204
    assert _delete(api, "clip-8", carol["comment_id"], "studio-1").status_code == 204
    assert _delete(api, "clip-8", carol["comment_id"], "studio-1").status_code == 204

    # Then the thread keeps its shape, deleted comments serve no body nor author
    listing = _list(api, "clip-8")["items"]
    assert listing == [
        {**top, "user_id": None, "body": None, "deleted": True, "reply_count": 1},
    ]
    thread = _list(api, "clip-8", parent_comment_id=top["comment_id"])["items"]
    assert thread == [bob, {**carol, "user_id": None, "body": None, "deleted": True}]

    # And each deletion counted once, live and in Postgres
    assert _comments_stat(api, "clip-8") == 1
    run_flusher_once(migrated)
    assert counters_in_postgres(migrated.database_url)["clip-8"]["comments"] == 1
    rows = fetch(migrated.database_url, "SELECT body FROM comments WHERE comment_id = $1", top["comment_id"])
    assert rows[0]["body"] == "top"  # a soft delete: the row and its body stay


def test_an_idempotency_key_answers_the_first_comment_and_adds_nothing(start_api, migrated: Settings) -> None:
    api = start_api(migrated.replace(rate_limits=""))
    first = _post(api, "clip-10", "alice", {"body": "once"}, **{"Idempotency-Key": "c-1"})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    _comment(api, "clip-10", "bob", "reply", parent=first.json()["comment_id"])

    retry = _post(api, "clip-10", "alice", {"body": " once "}, **{"Idempotency-Key": "c-1"})
    assert (retry.status_code, retry.json(), retry.headers["idempotent-replayed"]) == (
        201,
        first.json(),
        "true",
    )
    other = _post(api, "clip-10", "alice", {"body": "different"}, **{"Idempotency-Key": "c-1"})
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    assert _post(api, "clip-10", "bob", {"body": "once"}, **{"Idempotency-Key": "c-1"}).status_code == 201
    bad = _post(api, "clip-10", "alice", {"body": "x"}, **{"Idempotency-Key": ""})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_idempotency_key")

    # And 40 concurrent retries of 10 keyed comments make 10 rows
    async def storm() -> list[int]:
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:

            async def send(i: int) -> int:
                r = await client.post(
                    "/api/v1/content/clip-11/comments",
                    json={"body": f"comment {i}"},
                    headers={**_auth("carol"), "Idempotency-Key": f"k-{i}"},
                )
                assert r.status_code == 201, r.text
                return r.json()["comment_id"]

            return await asyncio.gather(*(send(i % 10) for i in range(40)))

    ids = asyncio.run(storm())
    assert len(set(ids)) == 10
    assert _comments_stat(api, "clip-10") == 3
    assert _comments_stat(api, "clip-11") == 10
    run_flusher_once(migrated)
    counters = counters_in_postgres(migrated.database_url)
    assert (counters["clip-10"]["comments"], counters["clip-11"]["comments"]) == (3, 10)


def test_comments_past_the_per_user_limit_get_429(start_api, migrated: Settings) -> None:
    api = start_api(migrated.replace(rate_limits="comment=2/60s"))
    codes = [_post(api, "clip-12", "alice", {"body": f"c{i}"}).status_code for i in range(3)]
    assert codes == [201, 201, 429]
    assert _post(api, "clip-12", "bob", {"body": "fine"}).status_code == 201
    assert _comments_stat(api, "clip-12") == 3
