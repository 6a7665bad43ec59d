"""Redis faults: scripts flushed, Redis stopped, the buffer full, Redis killed. Views acknowledged with
202 are never lost or counted twice; views refused with 503 are never counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import msgpack
import redis
from service_fixtures import (
    ROOT,
    ApiProcess,
    counters_in_postgres,
    run_flusher_once,
    service_env,
    token,
    wait_until,
)

from daemon.proc.servers import RedisServer
from daemon.settings import Settings

BATCH = "/api/v1/views/batch"


def ingest_headers() -> dict[str, str]:
    return {"Content-Type": "application/msgpack", "Authorization": f"Bearer {token(scope='ingest')}"}


class Ledger:
    """What the api acknowledged: content_id -> [views, watch_seconds]."""

    def __init__(self, api: ApiProcess) -> None:
        self.api = api
        self.counts: dict[str, list[int]] = {}

    def view(self, content_id: str, watch_seconds: int = 0) -> None:
        body = {"watch_seconds": watch_seconds} if watch_seconds else None
        r = self.api.client.post(f"/api/v1/content/{content_id}/views", json=body)
        assert r.status_code == 202, r.text
        self._add(content_id, watch_seconds)

    def batch(self, items: list[dict[str, Any]]) -> None:
        r = self.api.client.post(BATCH, content=msgpack.packb(items), headers=ingest_headers())
        assert (r.status_code, r.json()) == (202, {"accepted": len(items)}), r.text
        for item in items:
            self._add(item["content_id"], item.get("watch_seconds", 0))

    def _add(self, content_id: str, watch_seconds: int) -> None:
        acc = self.counts.setdefault(content_id, [0, 0])
        acc[0] += 1
        acc[1] += watch_seconds

    def postgres_rows(self) -> dict[str, tuple[int, int]]:
        return {cid: (v, w) for cid, (v, w) in self.counts.items()}


def postgres(settings: Settings) -> dict[str, tuple[int, int]]:
    got = counters_in_postgres(settings.database_url)
    for row in got.values():
        assert (row["likes"], row["dislikes"], row["comments"], row["shares"]) == (0, 0, 0, 0)
    return {cid: (row["views"], row["watch_seconds"]) for cid, row in got.items()}


def stats(api: ApiProcess, content_id: str) -> tuple[int, str | None, int | None]:
    r = api.client.get(f"/api/v1/content/{content_id}/stats")
    views = r.json().get("views") if r.status_code == 200 else None
    return r.status_code, r.headers.get("x-counts-source"), views


def metric(api: ApiProcess, name: str) -> float:
    text = api.client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_views_are_exact_after_script_flushes_between_calls(
    migrated: Settings, start_api: Callable[..., ApiProcess]
) -> None:
    settings = migrated.replace(buffer_flush_interval_ms=20, flush_interval_ms=20)
    api = start_api(settings)
    ledger = Ledger(api)
    flusher = subprocess.Popen(
        [sys.executable, "-m", "daemon.proc.cli", "flusher"],
        env=service_env(settings),
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        # Given views went through the api's and the flusher's scripts to Postgres
        for i in range(10):
            ledger.view("sf-a", i)
        ledger.batch([{"content_id": "sf-b", "watch_seconds": 3}] * 5)
        wait_until(lambda: postgres(settings) == ledger.postgres_rows(), 30, "the first views in Postgres")

        for round_ in range(3):
            # When Redis forgets every script
            with redis.Redis.from_url(settings.redis_url) as r:
                r.script_flush()
            # And more views arrive
            for i in range(7):
                ledger.view(f"sf-{'abc'[i % 3]}", round_)
            ledger.batch([{"content_id": "sf-b"}, {"content_id": "sf-c", "watch_seconds": 11}])

            # Then both the api (apply_views) and the running flusher (capture/finish) reload them
            wait_until(
                lambda: postgres(settings) == ledger.postgres_rows(), 30, f"round {round_} in Postgres"
            )

        # And reloading was transparent: no drain to Redis failed
        assert metric(api, "engagement_redis_flush_errors_total") == 0
    finally:
        if flusher.poll() is None:
            os.killpg(flusher.pid, signal.SIGTERM)
        assert flusher.wait(30) == 0
    assert api.stop() == 0
    assert postgres(settings) == ledger.postgres_rows()


def test_views_keep_being_accepted_while_redis_is_down_and_reach_postgres_after_it_returns(
    migrated: Settings, start_api: Callable[..., ApiProcess], redis_back: RedisServer
) -> None:
    settings = migrated.replace(buffer_flush_interval_ms=20, buffer_retry_max_ms=200)
    api = start_api(settings)
    ledger = Ledger(api)

    # Given some views already in Postgres
    for i in range(7):
        ledger.view("down-a", i)
    wait_until(lambda: stats(api, "down-a") == (200, "redis", 7), 10, "the views to reach Redis")
    run_flusher_once(settings)
    assert postgres(settings) == {"down-a": (7, 21)}
    assert api.client.get("/readyz").status_code == 200

    # When Redis stops (gracefully: its AOF keeps what it had)
    redis_back.stop()

    # Then the api still answers 202 to views: the buffer holds them
    for _ in range(20):
        ledger.view("down-a", 1)
    ledger.batch([{"content_id": "down-b", "watch_seconds": 2}] * 5 + [{"content_id": "down-a"}])
    ledger.view("down-c")
    wait_until(lambda: metric(api, "engagement_redis_flush_errors_total") >= 1, 10, "a failed drain")
    assert metric(api, "engagement_buffer_items") >= 1

    # And it says it is not ready
    r = api.client.get("/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "not_ready" and r.json()["checks"]["redis"] != "ok"
    assert r.json()["checks"]["postgres"] == "ok"

    # And stats fall back to the Postgres figures
    assert stats(api, "down-a") == (200, "postgres", 7)
    assert stats(api, "down-b") == (200, "postgres", 0)

    # When Redis is back
    redis_back.start()

    # Then the buffer drains: the live counts reach everything acknowledged
    # (one drain per shard: each item's drain may land on a different retry)
    wait_until(lambda: stats(api, "down-a") == (200, "redis", 28), 20, "down-a drained to Redis")
    wait_until(lambda: stats(api, "down-b") == (200, "redis", 5), 20, "down-b drained to Redis")
    wait_until(lambda: stats(api, "down-c") == (200, "redis", 1), 20, "down-c drained to Redis")
    wait_until(lambda: api.client.get("/readyz").status_code == 200, 20, "the api to be ready again")
    assert metric(api, "engagement_buffer_items") == 0

    # And one flusher pass makes Postgres exact
    run_flusher_once(settings)
    assert (
        postgres(settings)
        == ledger.postgres_rows()
        == {"down-a": (28, 41), "down-b": (5, 10), "down-c": (1, 0)}
    )
    assert api.stop() == 0


def test_a_full_buffer_refuses_new_items_with_503_and_counts_only_what_it_accepted(
    migrated: Settings, start_api: Callable[..., ApiProcess], redis_back: RedisServer
) -> None:
    # A drain interval far longer than the test: every accepted view stays queued in the buffer.
    settings = migrated.replace(buffer_max_items=5, buffer_flush_interval_ms=60_000)
    api = start_api(settings)
    ledger = Ledger(api)
    refused = 0

    def refused_with_503(response_status: int, body: dict[str, object], retry_after: str | None) -> None:
        assert (response_status, body.get("error"), retry_after) == (503, "buffer_full", "1"), body

    # Given Redis is down and the buffer holds 5 distinct items, its bound
    redis_back.stop()
    for i in range(5):
        ledger.view(f"full-{i}", i)

    # When a view for a 6th item arrives, single or in a batch
    r = api.client.post("/api/v1/content/full-5/views", json={"watch_seconds": 9})
    refused_with_503(r.status_code, r.json(), r.headers.get("retry-after"))
    refused += 1
    r = api.client.post(
        BATCH,
        content=msgpack.packb([{"content_id": "full-1"}, {"content_id": "full-6"}]),
        headers=ingest_headers(),
    )
    refused_with_503(r.status_code, r.json(), r.headers.get("retry-after"))
    refused += 2  # all or nothing: the batch's view for full-1 is refused too

    # Then views for items already buffered are still accepted
    for _ in range(3):
        ledger.view("full-0", 5)
    ledger.batch(
        [{"content_id": "full-2"}, {"content_id": "full-3", "watch_seconds": 4}, {"content_id": "full-3"}]
    )

    # And /metrics counts exactly the refused view events
    assert metric(api, "engagement_views_refused_total") == refused
    assert metric(api, "engagement_views_accepted_total") == 11

    # When Redis returns and the api stops (SIGTERM drains the buffer)
    redis_back.start()
    assert api.stop() == 0
    run_flusher_once(settings)

    # Then Postgres holds exactly the accepted views, none of the refused ones
    assert (
        postgres(settings)
        == ledger.postgres_rows()
        == {
            "full-0": (4, 15),
            "full-1": (1, 1),
            "full-2": (2, 2),
            "full-3": (3, 7),
            "full-4": (1, 4),
        }
    )


def test_a_full_buffer_still_accepts_views_for_items_whose_drain_is_waiting_for_redis(
    migrated: Settings, start_api: Callable[..., ApiProcess], redis_back: RedisServer
) -> None:
    settings = migrated.replace(buffer_max_items=5, buffer_flush_interval_ms=20, buffer_retry_max_ms=200)
    api = start_api(settings)
    ledger = Ledger(api)

    # Given Redis is down and 5 distinct items, the bound, are cut into drains that keep failing
    redis_back.stop()
    for i in range(5):
        ledger.view(f"wait-{i}")
    wait_until(lambda: metric(api, "engagement_redis_flush_errors_total") >= 1, 10, "a failed drain")

    # When more views for these same items arrive, then Redis returns
    try:
        for i in range(5):
            ledger.view(f"wait-{i}", 1)
    finally:
        redis_back.start()
    assert api.stop() == 0
    run_flusher_once(settings)

    # Then they were accepted and counted
    assert postgres(settings) == ledger.postgres_rows()


def test_views_still_in_the_api_buffer_survive_redis_being_killed(
    migrated: Settings, start_api: Callable[..., ApiProcess], redis_back: RedisServer
) -> None:
    # Redis' appendfsync everysec may lose what it applied in its last second before a SIGKILL, so the
    # honest promise is about what the api still holds: a drain interval longer than the test keeps
    # every acknowledged view in the api's buffer until the api stops.
    settings = migrated.replace(buffer_flush_interval_ms=60_000)
    api = start_api(settings)
    ledger = Ledger(api)

    # Given acknowledged views, all still in the api's buffer, and an open connection to Redis
    for i in range(30):
        ledger.view(f"kill-{i % 4}", i)
    ledger.batch([{"content_id": f"kill-{i % 6}", "watch_seconds": i} for i in range(100)])
    assert stats(api, "kill-0") == (200, "postgres", 0)  # no live counts in Redis yet
    assert metric(api, "engagement_buffer_items") == 6

    # When Redis is killed, views keep arriving, and Redis restarts
    redis_back.kill()
    for _ in range(10):
        ledger.view("kill-1", 2)
    ledger.batch([{"content_id": "kill-9"}] * 3)
    redis_back.start()

    # And the api stops gracefully (SIGTERM drains its buffer into the restarted Redis)
    assert api.stop() == 0
    run_flusher_once(settings)

    # Then Postgres holds exactly every acknowledged view
    assert postgres(settings) == ledger.postgres_rows()
    assert sum(v for v, _ in ledger.postgres_rows().values()) == 30 + 100 + 10 + 3
