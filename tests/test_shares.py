"""Shares: one row per share in Postgres, counted in stats and in content_counters.shares exactly once."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from service_fixtures import ApiProcess, counters_in_postgres, run_flusher_once, token

from daemon.proc.servers import free_port
from daemon.settings import Settings


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _share(api: ApiProcess, content_id: str, user: str, body: object, **headers: str) -> httpx.Response:
    return api.client.post(
        f"/api/v1/content/{content_id}/shares", json=body, headers={**_auth(user), **headers}
    )


def _shares_table(database_url: str) -> list[tuple[int, str, str, str, bool]]:
    async def fetch() -> list[tuple[int, str, str, str, bool]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT share_id, content_id, user_id, platform, external FROM shares ORDER BY share_id"
            )
        finally:
            await conn.close()
        return [tuple(r.values()) for r in rows]  # type: ignore[misc]

    return asyncio.run(fetch())


def test_a_share_is_recorded_counted_and_flushed_once(api: ApiProcess, migrated: Settings) -> None:
    first = _share(api, "clip-1", "alice", {"platform": "whatsapp", "external": True})
    assert first.status_code == 201
    share_id = first.json()["share_id"]
    assert first.json() == {
        "share_id": share_id,
        "content_id": "clip-1",
        "platform": "whatsapp",
        "external": True,
        "shares": 1,
    }
    second = _share(api, "clip-1", "bob", {"platform": "in_app"})  # external defaults to false
    assert (second.status_code, second.json()["shares"], second.json()["external"]) == (201, 2, False)
    third = _share(api, "clip-2", "alice", {"platform": "x", "external": False})
    assert (third.status_code, third.json()["shares"]) == (201, 1)

    assert api.client.get("/api/v1/content/clip-1/stats").json()["shares"] == 2
    assert _shares_table(migrated.database_url) == [
        (share_id, "clip-1", "alice", "whatsapp", True),
        (second.json()["share_id"], "clip-1", "bob", "in_app", False),
        (third.json()["share_id"], "clip-2", "alice", "x", False),
    ]
    run_flusher_once(migrated)
    counters = counters_in_postgres(migrated.database_url)
    assert (counters["clip-1"]["shares"], counters["clip-2"]["shares"]) == (2, 1)
    run_flusher_once(migrated)  # nothing pending: nothing counted twice
    assert counters_in_postgres(migrated.database_url)["clip-1"]["shares"] == 2


def test_an_idempotency_key_replays_the_first_share_without_a_new_row(
    api: ApiProcess, migrated: Settings
) -> None:
    body = {"platform": "email", "external": True}
    first = _share(api, "clip-3", "alice", body, **{"Idempotency-Key": "s-1"})
    assert first.status_code == 201
    assert _share(api, "clip-3", "bob", body).json()["shares"] == 2

    retry = _share(api, "clip-3", "alice", body, **{"Idempotency-Key": "s-1"})
    assert (retry.status_code, retry.json()) == (201, first.json())
    assert retry.headers["idempotent-replayed"] == "true"
    other = _share(
        api, "clip-3", "alice", {"platform": "sms", "external": True}, **{"Idempotency-Key": "s-1"}
    )
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")

    assert api.client.get("/api/v1/content/clip-3/stats").json()["shares"] == 2
    assert [row[2] for row in _shares_table(migrated.database_url)] == ["alice", "bob"]


def test_concurrent_shares_and_retries_count_exactly(start_api, migrated: Settings) -> None:
    api = start_api(migrated.replace(rate_limits=""))

    # Given 200 distinct shares over 4 items, each sent 3 times concurrently with its Idempotency-Key
    async def storm() -> None:
        semaphore = asyncio.Semaphore(48)
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:

            async def send(i: int) -> None:
                async with semaphore:
                    r = await client.post(
                        f"/api/v1/content/item-{i % 4}/shares",
                        json={"platform": "web", "external": i % 2 == 0},
                        headers={**_auth(f"user-{i}"), "Idempotency-Key": f"share-{i}"},
                    )
                assert r.status_code == 201, r.text

            await asyncio.gather(*(send(i) for i in range(200) for _ in range(3)))

    asyncio.run(storm())

    # Then each share has exactly one row and one count, in stats and after the flusher
    rows = _shares_table(migrated.database_url)
    assert sorted(row[2] for row in rows) == sorted(f"user-{i}" for i in range(200))
    for n in range(4):
        assert api.client.get(f"/api/v1/content/item-{n}/stats").json()["shares"] == 50
    run_flusher_once(migrated)
    counters = counters_in_postgres(migrated.database_url)
    assert [counters[f"item-{n}"]["shares"] for n in range(4)] == [50] * 4


def test_bad_share_requests_are_refused_and_record_nothing(api: ApiProcess, migrated: Settings) -> None:
    cases = [
        (b"{not json", 400, "malformed_body"),
        (b"", 400, "malformed_body"),
        (b"[]", 422, "invalid_body"),
        (b'{"platform": "x", "extra": 1}', 422, "unknown_field"),
        (b"{}", 422, "invalid_platform"),
        (b'{"platform": ""}', 422, "invalid_platform"),
        (b'{"platform": "WhatsApp"}', 422, "invalid_platform"),
        (b'{"platform": "a b"}', 422, "invalid_platform"),
        (b'{"platform": "' + b"p" * 33 + b'"}', 422, "invalid_platform"),
        (b'{"platform": 5}', 422, "invalid_platform"),
        (b'{"platform": "x", "external": "yes"}', 422, "invalid_external"),
        (b'{"platform": "x", "external": 1}', 422, "invalid_external"),
        (b'{"platform": "x", "external": null}', 422, "invalid_external"),
    ]
    for body, status, error in cases:
        r = api.client.post(
            "/api/v1/content/clip-4/shares",
            content=body,
            headers={**_auth("alice"), "Content-Type": "application/json"},
        )
        assert (r.status_code, r.json()["error"]) == (status, error), body
    r = api.client.post("/api/v1/content/clip-4/shares", json={"platform": "x"})
    assert (r.status_code, r.json()["error"]) == (401, "missing_token")
    r = _share(api, "bad%20id", "alice", {"platform": "x"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_content_id")
    assert _share(api, "clip-4", "alice", {"platform": "p" * 32}).status_code == 201  # the longest is fine
    assert len(_shares_table(migrated.database_url)) == 1
    assert api.client.get("/api/v1/content/clip-4/stats").json()["shares"] == 1


def test_shares_past_the_per_user_limit_get_429(start_api, migrated: Settings) -> None:
    api = start_api(migrated.replace(rate_limits="share=2/60s"))
    assert [_share(api, "clip-5", "alice", {"platform": "x"}).status_code for _ in range(3)] == [
        201,
        201,
        429,
    ]
    assert _share(api, "clip-5", "bob", {"platform": "x"}).status_code == 201
    assert len(_shares_table(migrated.database_url)) == 3


def test_redis_unavailable_refuses_the_share_and_keeps_no_row(start_api, migrated: Settings) -> None:
    # Given an api whose Redis is unreachable
    api = start_api(migrated.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5))

    # When a share arrives, then it is refused with 503 and Retry-After, and its row is rolled back
    r = _share(api, "clip-6", "alice", {"platform": "x"})
    assert (r.status_code, r.json()["error"]) == (503, "unavailable")
    assert int(r.headers["retry-after"]) >= 1
    assert _shares_table(migrated.database_url) == []
