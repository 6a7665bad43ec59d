"""GET /api/v1/content/{id}/stats/daily (daemon/daily.py): each UTC day's views, unique viewers and watch
seconds, exact before a flush (from Redis), after it (from content_daily), across days, through the
delta hash path, and while a captured batch is not yet committed; bad ranges get a specific 422."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest
from cold_fixtures import Stack
from service_fixtures import ApiProcess, run_flusher_once, token, wait_until

from daemon.daily import daily_stats
from daemon.proc.servers import RedisServer
from daemon.settings import Settings
from flusher.writer import write_batches

D5, D6, D7 = "2026-12-05", "2026-12-06", "2026-12-07"


def _day(date: str, views: int = 0, viewers: int = 0, watch: int = 0) -> dict[str, Any]:
    return {"date": date, "views": views, "unique_viewers": viewers, "watch_seconds": watch}


def _daily(api: ApiProcess, content_id: str, first: str = D5, last: str = D7) -> list[dict[str, Any]]:
    r = api.client.get(f"/api/v1/content/{content_id}/stats/daily", params={"from": first, "to": last})
    assert r.status_code == 200, r.text
    assert r.json()["content_id"] == content_id
    return r.json()["days"]


def _views(api: ApiProcess, content_id: str, users: list[str], seconds: int) -> None:
    for user in users:
        headers = {"Authorization": f"Bearer {token(user)}"}
        r = api.client.post(
            f"/api/v1/content/{content_id}/views", json={"watch_seconds": seconds}, headers=headers
        )
        assert r.status_code == 202, r.text


def _api_on(start_api: Callable[..., ApiProcess], settings: Settings, day: str) -> ApiProcess:
    return start_api(settings.replace(unique_viewers_day=day, buffer_flush_interval_ms=20))


@pytest.mark.parametrize("max_drains", [256, 0], ids=["drain-entries", "delta-fields"])
def test_each_day_is_exact_before_and_after_flushes(
    migrated: Settings, start_api: Callable[..., ApiProcess], redis_back: RedisServer, max_drains: int
) -> None:
    settings = migrated.replace(view_delta_max_drains=max_drains)
    # Given three views on D6 (10 s each, three users)
    api = _api_on(start_api, settings, D6)
    _views(api, "dy-a", ["u1", "u2", "u3"], 10)
    on_d6 = [_day(D5), _day(D6, 3, 3, 30), _day(D7)]
    wait_until(lambda: _daily(api, "dy-a") == on_d6, 10, "D6's views in Redis")  # before any flush
    run_flusher_once(settings)
    assert _daily(api, "dy-a") == on_d6  # from content_daily now
    assert api.stop() == 0

    # When D7 brings two more (5 s each, one user already seen on D6, one new)
    api = _api_on(start_api, settings, D7)
    _views(api, "dy-a", ["u1", "u4"], 5)
    both = [_day(D5), _day(D6, 3, 3, 30), _day(D7, 2, 2, 10)]
    wait_until(lambda: _daily(api, "dy-a") == both, 10, "D7's views in Redis")
    # Then each day keeps its own counts, before and after the flush; a one-day range, and the default
    run_flusher_once(settings)
    assert _daily(api, "dy-a") == both
    assert _daily(api, "dy-a", D7, D7) == [_day(D7, 2, 2, 10)]
    days = api.client.get("/api/v1/content/dy-a/stats/daily").json()["days"]
    assert len(days) == 30 and days[-2:] == both[1:]
    assert _daily(api, "dy-never") == [_day(D5), _day(D6), _day(D7)]

    # And with Redis stopped, the flushed figures come from Postgres alone
    redis_back.stop()
    assert _daily(api, "dy-a") == both


async def test_a_captured_batch_counts_once_until_and_after_its_commit(stack: Stack) -> None:
    # Given views applied to Redis (the stack's day is D7), then captured by a flusher that has not
    # committed them yet
    core = SimpleNamespace(settings=stack.settings, store=stack.store, pool=lambda: _pool(stack))
    buffer = stack.buffer()
    for user in ("u1", "u2"):
        assert buffer.add("dy-c", 7, user)
    assert await buffer.drain_once()
    flusher = stack.flusher()
    batches = await flusher.capture()
    assert batches
    expected = [_day(D6), _day(D7, 2, 2, 14)]
    # Then the captured side counts; more views after the capture add to the pending side
    assert await _read(core) == expected
    assert buffer.add("dy-c", 1, "u3")
    assert await buffer.drain_once()
    expected = [_day(D6), _day(D7, 3, 3, 15)]
    assert await _read(core) == expected
    # And once committed (Redis still holding the captured batch) nothing is counted twice; nor after the
    # batch is finished, nor after the rest is flushed
    async with stack.pool.acquire() as conn:
        assert (await write_batches(conn, batches)).committed
    assert await _read(core) == expected
    await flusher.finish(batches)
    assert await _read(core) == expected
    await flusher.drain()
    assert await _read(core) == expected


async def _read(core: Any) -> list[dict[str, Any]]:
    return (await daily_stats(core, "dy-c", date.fromisoformat(D6), date.fromisoformat(D7)))["days"]


async def _pool(stack: Stack) -> Any:
    return stack.pool


def test_bad_ranges_get_a_specific_error(api: ApiProcess) -> None:
    for params, code in (
        ({"from": "2026-13-01"}, "invalid_date"),
        ({"to": "yesterday"}, "invalid_date"),
        ({"from": D7, "to": D6}, "invalid_date_range"),
        ({"from": "2025-01-01", "to": "2026-01-02"}, "invalid_date_range"),
    ):
        r = api.client.get("/api/v1/content/dy-a/stats/daily", params=params)
        assert (r.status_code, r.json()["error"]) == (422, code), (params, r.text)
    r = api.client.get("/api/v1/content/dy-a/stats/daily", params={"from": "2025-01-02", "to": "2026-01-02"})
    assert r.status_code == 200 and len(r.json()["days"]) == 366
