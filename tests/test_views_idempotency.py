"""Idempotency-Key on the view endpoints (seed 001: every mutating endpoint): a retried view or batch
is counted once, a key reused for a different request is a 422, and a request the buffer refused
leaves its key free for the retry. End to end: HTTP in, Postgres out."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
from service_fixtures import ApiProcess, counters_in_postgres, run_flusher_once, token

from daemon.proc.servers import RedisServer
from daemon.settings import Settings

BATCH = "/api/v1/views/batch"


def view(api: ApiProcess, item: str, key: str | None, user: str | None = None, **body: object):  # type: ignore[no-untyped-def]
    headers = {}
    if key is not None:
        headers["Idempotency-Key"] = key
    if user is not None:
        headers["Authorization"] = f"Bearer {token(user)}"
    return api.client.post(f"/api/v1/content/{item}/views", json=body or None, headers=headers)


def batch(api: ApiProcess, items: list[dict[str, object]], key: str | None, client: str = "ingester"):  # type: ignore[no-untyped-def]
    headers = {
        "Content-Type": "application/msgpack",
        "Authorization": f"Bearer {token(client, scope='ingest')}",
    }
    if key is not None:
        headers["Idempotency-Key"] = key
    return api.client.post(BATCH, content=msgpack.packb(items), headers=headers)


def views_in_postgres(api: ApiProcess) -> dict[str, tuple[int, int]]:
    assert api.stop() == 0  # SIGTERM drains the buffer
    run_flusher_once(api.settings)
    rows = counters_in_postgres(api.settings.database_url)
    return {item: (row["views"], row["watch_seconds"]) for item, row in rows.items() if row["views"]}


def test_a_retried_single_view_with_the_same_key_is_counted_once(api: ApiProcess) -> None:
    # Given a view accepted with a key (anonymous, and another by a signed-in user)
    first = view(api, "idem-a", "k1", watch_seconds=30)
    assert (first.status_code, first.headers.get("idempotent-replayed")) == (202, None)
    assert view(api, "idem-a", "k1", user="ann", watch_seconds=30).status_code == 202
    # When each is retried, three times
    for _ in range(3):
        again = view(api, "idem-a", "k1", watch_seconds=30)
        assert (again.status_code, again.headers.get("idempotent-replayed")) == (202, "true")
        again = view(api, "idem-a", "k1", user="ann", watch_seconds=30)
        assert again.headers["idempotent-replayed"] == "true"
    # And the same key is used for another item (keys are scoped to the item): applied
    assert view(api, "idem-b", "k1").headers.get("idempotent-replayed") is None
    # And views without a key are never deduplicated
    for _ in range(2):
        assert view(api, "idem-b", None).status_code == 202
    # Then Postgres has each keyed view once
    assert views_in_postgres(api) == {"idem-a": (2, 60), "idem-b": (3, 0)}


def test_a_key_reused_for_a_different_view_is_a_422_and_counts_nothing(api: ApiProcess) -> None:
    assert view(api, "idem-c", "k2", watch_seconds=5).status_code == 202
    reused = view(api, "idem-c", "k2", watch_seconds=6)
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    bad = view(api, "idem-c", "has space")
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_idempotency_key")
    assert views_in_postgres(api) == {"idem-c": (1, 5)}


def test_a_retried_batch_with_the_same_key_is_counted_once(api: ApiProcess) -> None:
    items = [{"content_id": "idem-d"}, {"content_id": "idem-d", "watch_seconds": 7}, {"content_id": "idem-e"}]
    # Given a batch accepted with a key
    first = batch(api, items, "b-1")
    assert (first.status_code, first.json(), first.headers.get("idempotent-replayed")) == (
        202,
        {"accepted": 3},
        None,
    )
    # When it is retried: the first answer, nothing applied
    for _ in range(3):
        again = batch(api, items, "b-1")
        assert (again.status_code, again.json(), again.headers["idempotent-replayed"]) == (
            202,
            {"accepted": 3},
            "true",
        )
    # And the key reused for another body is refused
    reused = batch(api, items[:1], "b-1")
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    # And another ingest client's key space is its own
    assert batch(api, items[:1], "b-1", client="other-ingester").json() == {"accepted": 1}
    # And a batch refused as invalid claims nothing: the key stays free for a good body
    bad = batch(api, [{"content_id": ""}], "b-2")
    assert bad.status_code == 422, bad.text
    assert batch(api, items[2:], "b-2").headers.get("idempotent-replayed") is None
    # Then Postgres has each keyed batch once
    assert views_in_postgres(api) == {"idem-d": (3, 7), "idem-e": (2, 0)}


def test_a_view_the_full_buffer_refused_leaves_its_key_for_the_retry(
    migrated: Settings, start_api: Callable[..., ApiProcess]
) -> None:
    # Given a buffer that holds two items and never drains on its own during the test
    settings = migrated.replace(buffer_max_items=2, buffer_flush_interval_ms=600_000)
    api = start_api(settings)
    assert view(api, "full-a", None).status_code == 202
    assert view(api, "full-b", None).status_code == 202
    # When a keyed view for a third item is refused, and so is a keyed batch
    refused = view(api, "full-c", "r-1", watch_seconds=3)
    assert (refused.status_code, refused.json()["error"]) == (503, "buffer_full")
    refused = batch(api, [{"content_id": "full-d"}], "r-2")
    assert (refused.status_code, refused.json()["error"]) == (503, "buffer_full")
    assert views_in_postgres(api) == {"full-a": (1, 0), "full-b": (1, 0)}
    # Then the retries (on a fresh, empty buffer) are applied, once
    api = start_api(settings)
    for _ in range(2):
        assert view(api, "full-c", "r-1", watch_seconds=3).status_code == 202
        assert batch(api, [{"content_id": "full-d"}], "r-2").json() == {"accepted": 1}
    assert views_in_postgres(api) == {"full-a": (1, 0), "full-b": (1, 0), "full-c": (1, 3), "full-d": (1, 0)}


def test_with_redis_down_a_keyed_view_is_refused_and_an_unkeyed_one_is_buffered(
    api: ApiProcess, redis_back: RedisServer
) -> None:
    redis_back.stop()
    r = view(api, "down-a", "d-1")
    refused = (r.status_code, r.json()["error"], r.headers["retry-after"])
    assert refused == (503, "idempotency_unavailable", "1")
    assert view(api, "down-a", None).status_code == 202
    redis_back.start()
    assert view(api, "down-a", "d-1").headers.get("idempotent-replayed") is None
    assert views_in_postgres(api) == {"down-a": (2, 0)}
