"""The key layout on Redis Cluster: every script touches one slot, so the whole pipeline runs
unchanged on a cluster of three masters (docs/design.md, decision 1)."""

from __future__ import annotations

import pytest
import redis
from service_fixtures import (
    ApiProcess,
    cli,
    cli_reconcile,
    counters_in_postgres,
    run_flusher_once,
    token,
    wait_until,
)

from daemon.proc.servers import RedisClusterServers
from daemon.settings import Settings


@pytest.mark.slow
def test_views_flow_through_a_redis_cluster_exactly(
    redis_cluster: RedisClusterServers, migrated: Settings
) -> None:
    # Given the api and the flusher on a three-master Redis Cluster, with 64 shards spread over its slots
    settings = migrated.replace(redis_url=redis_cluster.url, redis_cluster=True, shards=64)
    with redis.RedisCluster.from_url(redis_cluster.url) as client:
        client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    api = ApiProcess(settings)
    try:
        # When single views and a batch arrive for 300 items, and the scripts are flushed midway
        # (with Idempotency-Keys, whose claims live in the item's slot or the ingest client's, and
        # retries of some of them, which count nothing)
        for i in range(600):
            key = {"Idempotency-Key": f"k-{i}"}
            assert api.client.post(f"/api/v1/content/c-{i % 300}/views", headers=key).status_code == 202
        for i in range(0, 600, 7):
            key = {"Idempotency-Key": f"k-{i}"}
            replay = api.client.post(f"/api/v1/content/c-{i % 300}/views", headers=key)
            assert replay.headers["idempotent-replayed"] == "true"
        for node in redis_cluster.nodes:
            with redis.Redis.from_url(node.url) as client:
                client.script_flush()
        batch = [{"content_id": f"c-{i % 300}", "watch_seconds": 2} for i in range(3000)]
        headers = {"Authorization": f"Bearer {token(scope='ingest')}", "Idempotency-Key": "batch-1"}
        for _ in range(2):
            assert api.client.post("/api/v1/views/batch", json=batch, headers=headers).status_code == 202

        # Then live counts are exact on the cluster
        def live_views(content_id: str) -> int:
            return api.client.get(f"/api/v1/content/{content_id}/stats").json()["views"]

        wait_until(lambda: all(live_views(f"c-{i}") == 12 for i in range(0, 300, 37)), what="drains")

        # And trending ranks across every shard of every master (the top three get 3, 2, 1 more)
        for i, more in ((1, 3), (2, 2), (3, 1)):
            for _ in range(more):
                assert api.client.post(f"/api/v1/content/c-{i}/views").status_code == 202
        top = [("c-1", 15), ("c-2", 14), ("c-3", 13)]

        def trending() -> list[tuple[str, int]]:
            items = api.client.get("/api/v1/trending", params={"window": "1h", "limit": "3"}).json()["items"]
            return [(item["content_id"], item["views"]) for item in items]

        wait_until(lambda: trending() == top, what="trending on the cluster")
        assert api.stop() == 0
    finally:
        api.kill()

    # And the flusher, on the cluster too, writes Postgres exactly once
    run_flusher_once(settings)
    rows = counters_in_postgres(settings.database_url)
    expected = {f"c-{i}": (12, 20) for i in range(300)} | {c: (n, 20) for c, n in top}
    assert {c: (r["views"], r["watch_seconds"]) for c, r in rows.items()} == expected
    sizes = []
    for node in redis_cluster.nodes:
        with redis.Redis.from_url(node.url) as client:
            sizes.append(client.dbsize())
    assert all(sizes), sizes  # the shards really were spread over all three masters


@pytest.mark.slow
def test_comments_and_a_user_purge_run_unchanged_on_a_redis_cluster(
    redis_cluster: RedisClusterServers, migrated: Settings
) -> None:
    # Given the api on a three-master Redis Cluster, 64 shards
    settings = migrated.replace(redis_url=redis_cluster.url, redis_cluster=True, shards=64, rate_limits="")
    auth = {user: {"Authorization": f"Bearer {token(user)}"} for user in ("alice", "bob")}
    api = ApiProcess(settings)
    try:
        # When alice and bob comment, like and subscribe over 30 items, the scripts are flushed midway,
        # bob deletes one comment and alice is purged
        bob_comments = {}
        for i in range(30):
            for user in ("alice", "bob"):
                r = api.client.post(
                    f"/api/v1/content/c-{i}/comments", json={"body": "hi"}, headers=auth[user]
                )
                assert r.status_code == 201, r.text
                bob_comments[i] = r.json()["comment_id"]
                assert api.client.post(f"/api/v1/content/c-{i}/like", headers=auth[user]).status_code == 200
            if i % 3 == 0:
                r = api.client.post(f"/api/v1/creators/s-{i}/subscribe", headers=auth["alice"])
                assert r.status_code == 200
            if i == 15:
                for node in redis_cluster.nodes:
                    with redis.Redis.from_url(node.url) as client:
                        client.script_flush()
        r = api.client.delete(f"/api/v1/content/c-0/comments/{bob_comments[0]}", headers=auth["bob"])
        assert r.status_code == 204
        internal = {"Authorization": f"Bearer {token('gdpr', scope='internal')}"}
        r = api.client.delete("/internal/v1/users/alice", headers=internal)
        assert r.status_code == 202, r.text
        assert r.json()["removed"] == {
            "likes": 30,
            "dislikes": 0,
            "subscriptions": 10,
            "comments": 30,
            "shares": 0,
            "watch_history": 0,
            "playlists": 0,
            "idempotency_records": 0,
        }

        # Then the live counts hold only bob's
        for i in range(30):
            body = api.client.get(f"/api/v1/content/c-{i}/stats").json()
            assert (body["likes"], body["comments"]) == (1, 0 if i == 0 else 1), i
        assert api.stop() == 0
    finally:
        api.kill()

    # And so does Postgres after the flusher
    run_flusher_once(settings)
    rows = counters_in_postgres(settings.database_url)
    assert {c: (r["likes"], r["comments"]) for c, r in rows.items()} == {
        f"c-{i}": (1, 0 if i == 0 else 1) for i in range(30)
    }


@pytest.mark.slow
def test_cold_keys_a_cluster_forgot_are_loaded_back_and_reconcile_scans_every_master(
    redis_cluster: RedisClusterServers, migrated: Settings
) -> None:
    # Given likes of 40 users over 20 items on a three-master cluster, flushed to Postgres
    settings = migrated.replace(redis_url=redis_cluster.url, redis_cluster=True, shards=64, rate_limits="")
    api = ApiProcess(settings)
    try:
        for u in range(40):
            auth = {"Authorization": f"Bearer {token(f'u{u}')}"}
            assert api.client.post(f"/api/v1/content/c-{u % 20}/like", headers=auth).status_code == 200
        run_flusher_once(settings)
        # When every master forgets its cold keys (as evictions would)
        forgotten = 0
        for node in redis_cluster.nodes:
            with redis.Redis.from_url(node.url) as client:
                for pattern in ("eng:{s:*}:c:*", "eng:{s:*}:lk:*"):
                    for name in list(client.scan_iter(match=pattern, count=1000)):
                        forgotten += client.delete(name)  # one at a time: a node holds many slots
        assert forgotten == 20 + 40
        # Then reads answer from Postgres, then from Redis again, with the same counts
        for source in ("postgres", "redis"):
            r = api.client.get("/api/v1/content/c-3/stats")
            assert (r.headers["x-counts-source"], r.json()["likes"]) == (source, 2)
        # and the users' next changes move on from Postgres's states, counted once
        for u in range(40):
            auth = {"Authorization": f"Bearer {token(f'u{u}')}"}
            action = "like" if u % 2 else "dislike"
            assert api.client.post(f"/api/v1/content/c-{u % 20}/{action}", headers=auth).status_code == 200
        assert api.stop() == 0
    finally:
        api.kill()
    # And reconcile finds every key the masters hold (20 items) and nothing to repair
    out = cli_reconcile(settings)
    assert "20 items checked, 0 fields repaired" in out, out
    run_flusher_once(settings)
    rows = counters_in_postgres(settings.database_url)
    # (users i and i + 20 share item c-i and a parity: both like it again, or both switch to a dislike)
    want = {f"c-{i}": (2, 0) if i % 2 else (0, 2) for i in range(20)}
    assert {c: (r["likes"], r["dislikes"]) for c, r in rows.items()} == want


def _cold_loads(api: ApiProcess, kind: str) -> float:
    for line in api.client.get("/metrics").text.splitlines():
        if line.startswith(f'engagement_cold_loads_total{{kind="{kind}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no cold loads series of {kind}")


@pytest.mark.slow
def test_row_filters_on_a_cluster_spare_first_likes_a_postgres_read_and_never_hide_a_row(
    redis_cluster: RedisClusterServers, migrated: Settings
) -> None:
    # Given row filters built on a three-master cluster (one per shard, in the shard's slot)
    settings = migrated.replace(redis_url=redis_cluster.url, redis_cluster=True, shards=64, rate_limits="")
    out = cli(settings, "row-filter", "--rebuild")
    assert "built 64 shards" in out and "64 of 64 shards complete" in out, out
    api = ApiProcess(settings)
    try:
        # When 40 users like 20 items for the first time
        for u in range(40):
            auth = {"Authorization": f"Bearer {token(f'u{u}')}"}
            assert api.client.post(f"/api/v1/content/c-{u % 20}/like", headers=auth).status_code == 200
        # Then no like read Postgres
        assert (_cold_loads(api, "like"), _cold_loads(api, "counts")) == (0, 0)
        run_flusher_once(settings)
        # And once every master forgets the states, each is read from Postgres, not taken as new
        for node in redis_cluster.nodes:
            with redis.Redis.from_url(node.url) as client:
                for name in list(client.scan_iter(match="eng:{s:*}:lk:*", count=1000)):
                    client.delete(name)
        for u in range(40):
            auth = {"Authorization": f"Bearer {token(f'u{u}')}"}
            r = api.client.post(f"/api/v1/content/c-{u % 20}/like", headers=auth)
            assert (r.status_code, r.json()["likes"]) == (200, 2), r.text
        assert _cold_loads(api, "like") == 40
        assert api.stop() == 0
    finally:
        api.kill()
    run_flusher_once(settings)
    rows = counters_in_postgres(settings.database_url)
    assert {c: r["likes"] for c, r in rows.items()} == {f"c-{i}": 2 for i in range(20)}


@pytest.mark.slow
def test_likes_past_the_limit_get_429_on_a_redis_cluster(
    redis_cluster: RedisClusterServers, migrated: Settings
) -> None:
    """On a cluster the user's rate-limit log and the item are in different slots: two script calls
    (on one Redis it is one call, tests/test_reactions.py); the refusal is the same."""
    settings = migrated.replace(
        redis_url=redis_cluster.url, redis_cluster=True, shards=64, rate_limits="like=2/60s"
    )
    auth = {"Authorization": f"Bearer {token('alice')}"}
    api = ApiProcess(settings)
    try:
        assert api.client.post("/api/v1/content/c-1/like", headers=auth).status_code == 200
        assert api.client.delete("/api/v1/content/c-1/like", headers=auth).status_code == 200
        r = api.client.post("/api/v1/content/c-2/like", headers=auth)
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
        assert api.client.get("/api/v1/content/c-2/stats").json()["likes"] == 0
        bob = {"Authorization": f"Bearer {token('bob')}"}
        assert api.client.post("/api/v1/content/c-2/like", headers=bob).json()["likes"] == 1
    finally:
        api.stop()
