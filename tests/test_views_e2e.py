"""Views end to end: HTTP in, Redis live counts, Postgres out, exact totals."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import httpx
import msgpack
import redis
from service_fixtures import (
    ApiProcess,
    counters_in_postgres,
    run_flusher_once,
    token,
    wait_until,
)

from daemon import keys
from daemon.settings import Settings


async def _post_singles(base_url: str, views: list[tuple[str, int]], concurrency: int = 32) -> int:
    queue = list(views)
    accepted = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while queue:
            content_id, watch = queue.pop()
            body = {"watch_seconds": watch} if watch else None
            r = await client.post(f"/api/v1/content/{content_id}/views", json=body)
            assert r.status_code == 202, r.text
            accepted += 1

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return accepted


def _post_batch(api: ApiProcess, body: object, headers: dict[str, str], as_msgpack: bool) -> httpx.Response:
    if not as_msgpack:
        return api.client.post("/api/v1/views/batch", json=body, headers=headers)
    return api.client.post(
        "/api/v1/views/batch",
        content=msgpack.packb(body),
        headers={**headers, "Content-Type": "application/msgpack"},
    )


def _stats(api: ApiProcess, content_id: str) -> dict[str, int]:
    r = api.client.get(f"/api/v1/content/{content_id}/stats")
    assert r.status_code == 200, r.text
    return r.json()


def test_thousands_of_single_and_batched_views_reach_postgres_exactly(
    api: ApiProcess, migrated: Settings
) -> None:
    # Given 200 items, 4,000 single views (some with watch time) and 30 bulk batches, msgpack and JSON
    rng = random.Random(7)
    items = [f"video-{i}" for i in range(200)]
    expected_views: Counter[str] = Counter()
    expected_watch: Counter[str] = Counter()
    singles = []
    for _ in range(4000):
        content_id = rng.choice(items[:50])  # a hot head: many views per item
        watch = rng.choice([0, 0, 5, 30])
        singles.append((content_id, watch))
        expected_views[content_id] += 1
        expected_watch[content_id] += watch
    ingest = {"Authorization": f"Bearer {token('ingest-svc', scope='ingest')}"}

    # When they are posted over HTTP
    assert asyncio.run(_post_singles(api.base_url, singles)) == 4000
    for b in range(30):
        batch = []
        for _ in range(1000):
            item = {"content_id": rng.choice(items)}
            if rng.random() < 0.3:
                item["watch_seconds"] = rng.randint(1, 600)
                expected_watch[item["content_id"]] += item["watch_seconds"]
            if rng.random() < 0.5:
                item["user_id"] = f"user-{rng.randint(1, 5000)}"
            expected_views[item["content_id"]] += 1
            batch.append(item)
        r = _post_batch(api, batch, ingest, as_msgpack=b % 2 == 0)
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 1000}

    # Then the live counts reach the exact totals once the buffer drained
    wait_until(
        lambda: all(_stats(api, c)["views"] == n for c, n in expected_views.items()),
        what="live counts to reach the posted totals",
    )
    assert sum(_stats(api, c)["views"] for c in items) == 34_000

    # And after the flusher, Postgres holds exactly the same, and stats agree
    assert "rows" in run_flusher_once(migrated)
    rows = counters_in_postgres(migrated.database_url)
    assert {c: r["views"] for c, r in rows.items()} == dict(expected_views)
    assert {c: r["watch_seconds"] for c, r in rows.items() if r["watch_seconds"]} == {
        c: w for c, w in expected_watch.items() if w
    }
    for content_id in items[:10]:
        assert _stats(api, content_id)["views"] == rows[content_id]["views"]


def test_sigterm_drains_the_buffer_before_exit(start_api, migrated: Settings) -> None:
    # Given an api whose buffer would not drain by itself for a minute
    api = start_api(migrated.replace(buffer_flush_interval_ms=60_000))
    for i in range(300):
        assert api.client.post(f"/api/v1/content/item-{i % 3}/views").status_code == 202
    with redis.Redis.from_url(migrated.redis_url) as r:
        counts = [keys.counts_key(keys.shard_of(f"item-{i}", migrated.shards), f"item-{i}") for i in range(3)]
        assert not r.exists(*counts)  # nothing applied yet

    # When it is asked to stop
    assert api.stop() == 0

    # Then every acknowledged view reached Redis, and the flusher takes them to Postgres
    run_flusher_once(migrated)
    rows = counters_in_postgres(migrated.database_url)
    assert {c: r["views"] for c, r in rows.items()} == {"item-0": 100, "item-1": 100, "item-2": 100}


def _apply_calls(r: redis.Redis) -> int:
    """Script calls that ran: by function (FCALL; "Function not found" is a failed call), or by EVAL."""
    stats = r.info("commandstats")
    fcall = stats.get("cmdstat_fcall", {})
    return (
        fcall.get("calls", 0) - fcall.get("failed_calls", 0) + stats.get("cmdstat_eval", {}).get("calls", 0)
    )


def test_a_viral_item_costs_redis_one_script_call_per_drain(start_api, migrated: Settings) -> None:
    # Given an api draining only on shutdown, and Redis' command statistics reset
    api = start_api(migrated.replace(buffer_flush_interval_ms=60_000))
    with redis.Redis.from_url(migrated.redis_url) as r:
        r.config_resetstat()
        # When 2,000 views of one item arrive
        assert asyncio.run(_post_singles(api.base_url, [("viral", 0)] * 2000)) == 2000
        assert api.stop() == 0
        # Then Redis saw one script call for all of them, plus one because the item was new to Redis
        # (its counts are cold: the first call answers "unknown", the second one applies the drain)
        assert _apply_calls(r) == 2
        key = keys.counts_key(keys.shard_of("viral", migrated.shards), "viral")
        assert r.hget(key, "views") == b"2000"
        # And once Redis holds the item, its next drain is one script call
        api = start_api(migrated.replace(buffer_flush_interval_ms=60_000))
        r.config_resetstat()
        assert asyncio.run(_post_singles(api.base_url, [("viral", 0)] * 2000)) == 2000
        assert api.stop() == 0
        assert _apply_calls(r) == 1
        assert r.hget(key, "views") == b"4000"


def test_postgres_gets_one_row_write_per_item_per_flush(api: ApiProcess, migrated: Settings) -> None:
    # Given 5,000 views over 10 items applied to Redis
    for _ in range(5):
        batch = [{"content_id": f"row-{j % 10}"} for j in range(1000)]
        headers = {"Authorization": f"Bearer {token(scope='ingest')}"}
        assert api.client.post("/api/v1/views/batch", json=batch, headers=headers).status_code == 202
    wait_until(lambda: all(_stats(api, f"row-{j}")["views"] == 500 for j in range(10)), what="drain")

    # When the flusher runs once
    out = run_flusher_once(migrated)

    # Then it wrote one content_counters row per item
    assert out.strip().endswith("10 rows"), out
    rows = counters_in_postgres(migrated.database_url)
    assert {c: r["views"] for c, r in rows.items()} == {f"row-{j}": 500 for j in range(10)}


def test_stats_of_an_unknown_item_are_zero(api: ApiProcess) -> None:
    assert _stats(api, "never-seen") == {
        "content_id": "never-seen",
        "views": 0,
        "likes": 0,
        "dislikes": 0,
        "comments": 0,
        "shares": 0,
        "watch_seconds": 0,
        "completions": 0,
        "skips": 0,
        "replays": 0,
        "unique_viewers": 0,
        "unique_viewers_today": 0,
    }


def test_health_readiness_and_metrics_answer(api: ApiProcess) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "postgres": "ok"}
    assert api.client.post("/api/v1/content/m1/views").status_code == 202
    metrics = api.client.get("/metrics").text
    route = "/api/v1/content/{contentId}/views"
    assert f'engagement_http_requests_total{{method="POST",route="{route}",status="202"}} 1.0' in metrics
    for name in (
        "engagement_http_request_duration_seconds_bucket",
        "engagement_buffer_items",
        "engagement_views_accepted_total",
        "engagement_views_refused_total",
        "engagement_redis_flush_duration_seconds",
        "engagement_redis_flush_errors_total",
    ):
        assert name in metrics


def test_metrics_of_several_workers_add_up_on_one_port(start_api, migrated: Settings) -> None:
    # Given an api with two worker processes, each with its own buffer and registry
    api = start_api(migrated, workers=2)
    # When 200 views arrive over fresh connections (spread over both workers)
    for i in range(200):
        with httpx.Client(base_url=api.base_url) as client:
            assert client.post(f"/api/v1/content/w-{i % 4}/views").status_code == 202

    # Then any scrape reports the views of all workers
    def scraped_views() -> float:
        for line in api.client.get("/metrics").text.splitlines():
            if line.startswith("engagement_views_accepted_total "):
                return float(line.split()[1])
        return -1.0

    wait_until(lambda: scraped_views() == 200.0, what="both workers' snapshots to add up to 200 views")
    assert api.stop() == 0
    run_flusher_once(migrated)
    assert {c: r["views"] for c, r in counters_in_postgres(migrated.database_url).items()} == {
        f"w-{i}": 50 for i in range(4)
    }


def test_a_columnar_batch_counts_what_the_same_items_count(api: ApiProcess, migrated: Settings) -> None:
    # Given 6 batches of 1,000 events over 40 items, every event with a user id, some with watch time,
    # each sent twice: as an array of items on items "r-<n>", and as an object of columns (null where
    # an event has no watch time) on their twins "k-<n>", alternately msgpack and JSON
    rng = random.Random(11)
    ingest = {"Authorization": f"Bearer {token('ingest-svc', scope='ingest')}"}
    expected_views: Counter[str] = Counter()
    expected_watch: Counter[str] = Counter()
    for b in range(6):
        events = []
        for _ in range(1000):
            n = rng.randrange(40)
            event = {"n": n, "user_id": f"user-{rng.randrange(3000)}"}
            if rng.random() < 0.4:
                event["watch_seconds"] = rng.randint(1, 600)
                expected_watch[str(n)] += event["watch_seconds"]
            expected_views[str(n)] += 1
            events.append(event)
        rows = [{"content_id": f"r-{e['n']}", **{k: v for k, v in e.items() if k != "n"}} for e in events]
        columns = {
            "content_id": [f"k-{e['n']}" for e in events],
            "user_id": [e["user_id"] for e in events],
            "watch_seconds": [e.get("watch_seconds") for e in events],
        }
        for body in (rows, columns):
            r = _post_batch(api, body, ingest, as_msgpack=b % 2 == 0)
            assert (r.status_code, r.json()) == (202, {"accepted": 1000}), r.text

    # Then each item and its twin have the same live counts, unique viewers included (the same user
    # ids in the same HLL give the same estimate), and the exact totals
    def twins_agree() -> bool:
        return all(
            _stats(api, f"k-{n}")["views"] == expected_views[str(n)]
            and _stats(api, f"r-{n}")["views"] == expected_views[str(n)]
            for n in range(40)
        )

    wait_until(twins_agree, what="both forms to reach the posted totals")
    for n in range(40):
        row, column = _stats(api, f"r-{n}"), _stats(api, f"k-{n}")
        assert {k: v for k, v in column.items() if k != "content_id"} == {
            k: v for k, v in row.items() if k != "content_id"
        }

    # And Postgres holds exactly the same for both after a flush
    assert "rows" in run_flusher_once(migrated)
    stored = counters_in_postgres(migrated.database_url)
    for prefix in ("r-", "k-"):
        assert {str(n): stored[f"{prefix}{n}"]["views"] for n in range(40)} == dict(expected_views)
        assert {
            str(n): stored[f"{prefix}{n}"]["watch_seconds"] for n in range(40) if expected_watch[str(n)]
        } == {k: w for k, w in expected_watch.items() if w}
