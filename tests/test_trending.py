"""GET /api/v1/trending (daemon/trending.py): items with distinct counts ranked in exact order, and an
item dropped once its views leave the window, on a pinned clock (ENGAGEMENT_TRENDING_CLOCK_S)."""

from __future__ import annotations

from collections.abc import Callable

from service_fixtures import ApiProcess, token, wait_until

from daemon.proc.servers import RedisServer
from daemon.settings import Settings

T0 = 1_765_000_800.0  # on an hour's start: 5-minute bucket 5,883,336, hour 490,278


def _trending(api: ApiProcess, window: str, limit: int = 20) -> list[tuple[str, int]]:
    r = api.client.get("/api/v1/trending", params={"window": window, "limit": str(limit)})
    assert r.status_code == 200, r.text
    assert r.json()["window"] == window
    return [(i["content_id"], i["views"]) for i in r.json()["items"]]


def _view(api: ApiProcess, counts: dict[str, int]) -> None:
    batch = [{"content_id": c} for c, n in counts.items() for _ in range(n - 1)]
    for content_id in counts:  # one single view each, the rest in one batch
        assert api.client.post(f"/api/v1/content/{content_id}/views").status_code == 202
    if batch:
        ingest = {"Authorization": f"Bearer {token('svc', scope='ingest')}"}
        assert api.client.post("/api/v1/views/batch", json=batch, headers=ingest).status_code == 202


def _at(start_api: Callable[..., ApiProcess], settings: Settings, clock: float) -> ApiProcess:
    pinned = settings.replace(trending_clock_s=clock, trending_cache_ms=0, buffer_flush_interval_ms=20)
    return start_api(pinned)


def test_items_rank_by_views_in_their_window_and_leave_it(
    migrated: Settings, start_api: Callable[..., ApiProcess]
) -> None:
    # Given views at T0
    api = _at(start_api, migrated, T0)
    _view(api, {"tr-a": 5, "tr-b": 3, "tr-c": 1, "tr-d": 2})
    expected = [("tr-a", 5), ("tr-b", 3), ("tr-d", 2), ("tr-c", 1)]
    wait_until(lambda: _trending(api, "1h") == expected, 10, "the views to reach Redis")

    # Then every window ranks them, most first; limit takes the top
    assert _trending(api, "24h") == _trending(api, "7d") == expected
    assert _trending(api, "1h", limit=2) == expected[:2]
    assert api.stop() == 0

    # When an hour later tr-c gets 10 views
    api = _at(start_api, migrated, T0 + 3600)
    assert _trending(api, "1h") == []  # T0's bucket left the last 12 five-minute buckets
    _view(api, {"tr-c": 10})
    wait_until(lambda: _trending(api, "1h") == [("tr-c", 10)], 10, "tr-c's views to reach Redis")
    assert _trending(api, "24h") == [("tr-c", 11), ("tr-a", 5), ("tr-b", 3), ("tr-d", 2)]
    assert api.stop() == 0

    # Then 24 hours after the first hour, only 7d still holds it all; 7 days after the second, nothing
    api = _at(start_api, migrated, T0 + 25 * 3600)
    assert _trending(api, "24h") == []
    assert _trending(api, "7d") == [("tr-c", 11), ("tr-a", 5), ("tr-b", 3), ("tr-d", 2)]
    assert api.stop() == 0
    api = _at(start_api, migrated, T0 + 3600 + 7 * 86400)
    assert _trending(api, "7d") == []


def test_trending_is_unavailable_without_redis(
    migrated: Settings, start_api: Callable[..., ApiProcess], redis_back: RedisServer
) -> None:
    api = _at(start_api, migrated, T0)
    redis_back.stop()
    r = api.client.get("/api/v1/trending")
    assert (r.status_code, r.json()["error"], r.headers["Retry-After"]) == (503, "unavailable", "1")


def test_bad_trending_parameters_get_a_specific_error(api: ApiProcess) -> None:
    for params, code in (
        ({"window": "2h"}, "invalid_window"),
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "101"}, "invalid_limit"),
    ):
        r = api.client.get("/api/v1/trending", params=params)
        assert (r.status_code, r.json()["error"]) == (422, code), r.text
    assert api.client.get("/api/v1/trending").json() == {"window": "1h", "items": []}
