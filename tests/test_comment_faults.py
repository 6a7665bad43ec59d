"""Redis unavailable: comments are still posted and deleted (they are Postgres rows); their count changes
wait on the rows and reconcile applies each exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service_fixtures import (
    ApiProcess,
    cli_reconcile,
    counters_in_postgres,
    run_flusher_once,
    token,
)

from daemon import comment_counts, db, keys
from daemon.metrics import Metrics
from daemon.proc.servers import RedisServer
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from lua import Scripts


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _post(api: ApiProcess, user: str, text: str, parent: int | None = None) -> int:
    body: dict[str, object] = {"body": text}
    if parent is not None:
        body["parent_comment_id"] = parent
    r = api.client.post("/api/v1/content/item-c/comments", json=body, headers=_auth(user))
    assert r.status_code == 201, r.text
    return r.json()["comment_id"]


def _delete(api: ApiProcess, comment_id: int, user: str) -> None:
    r = api.client.delete(f"/api/v1/content/item-c/comments/{comment_id}", headers=_auth(user))
    assert r.status_code == 204, r.text


def _stats(api: ApiProcess) -> tuple[str, int]:
    r = api.client.get("/api/v1/content/item-c/stats")
    return r.headers["x-counts-source"], r.json()["comments"]


def _comment_fallbacks(api: ApiProcess) -> float:
    for line in api.client.get("/metrics").text.splitlines():
        if line.startswith('engagement_fallback_writes_total{kind="comment"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_with_redis_stopped_comments_are_accepted_and_counts_end_exact_after_reconcile(
    start_api: Callable[..., ApiProcess], migrated: Settings, redis_back: RedisServer
) -> None:
    api = start_api()
    # Given two comments counted and flushed
    early = [_post(api, "ann", "before 1"), _post(api, "bob", "before 2")]
    run_flusher_once(migrated)
    assert _stats(api) == ("redis", 2)

    # When Redis stops: comments, a reply and deletions are still answered
    redis_back.stop()
    during = [_post(api, "ann", "during 1"), _post(api, "cid", "during 2")]
    _post(api, "bob", "a reply", parent=early[0])
    _delete(api, early[1], "bob")
    gone = _post(api, "ann", "posted and deleted during the outage")
    _delete(api, gone, "ann")
    listing = api.client.get("/api/v1/content/item-c/comments").json()["items"]
    assert [c["comment_id"] for c in listing] == [gone, *during[::-1], early[1], early[0]]
    assert [c["reply_count"] for c in listing] == [0, 0, 0, 0, 1]
    # the counts then come from Postgres, which has not seen the outage's changes yet
    assert _stats(api) == ("postgres", 2)
    assert _comment_fallbacks(api) == 5.0

    # And when Redis returns and reconcile runs, each change is applied once
    redis_back.start()
    api.kill()
    api = start_api()
    assert "4 comment counts settled" in cli_reconcile(migrated)
    assert _stats(api) == ("redis", 4)
    assert "comment counts settled" not in cli_reconcile(migrated)
    run_flusher_once(migrated)
    assert counters_in_postgres(migrated.database_url)["item-c"]["comments"] == 4
    assert _stats(api) == ("redis", 4)


def test_a_count_change_applied_before_a_crash_is_applied_once(migrated: Settings) -> None:
    async def scenario() -> list[int]:
        redis = make_redis(migrated)
        pool = await db.create_pool(migrated)
        store = Store(migrated, redis, Scripts.load(), db.provided(pool), Metrics())
        shard = keys.shard_of("item-m", migrated.shards)
        counts_field = (keys.counts_key(shard, "item-m"), "comments")
        try:
            comment_id = await pool.fetchval(
                "INSERT INTO comments (content_id, user_id, body) VALUES ('item-m', 'ann', 'x')"
                " RETURNING comment_id"
            )
            # Given a settle that applied the +1 in Redis, then died before its flag committed
            marker = (keys.rec_key(shard), keys.comment_mark(comment_id, True))
            assert await store.count_comments([("item-m", comment_id, 1)]) == 1
            assert await redis.hexists(*marker)
            seen = [int(await redis.hget(*counts_field))]
            # When the row is settled again, then the +1 is not applied a second time
            assert await comment_counts.settle_pending(store, pool) == 1
            seen.append(int(await redis.hget(*counts_field)))
            assert not await redis.hexists(*marker)  # forgotten once the flag committed
            assert await comment_counts.settle_pending(store, pool) == 0
            # And its deletion is applied once too
            await pool.execute(
                "UPDATE comments SET soft_delete_flag = true WHERE comment_id = $1", comment_id
            )
            assert await comment_counts.settle(store, pool, [comment_id]) == 1
            assert await comment_counts.settle(store, pool, [comment_id]) == 0
            seen.append(int(await redis.hget(*counts_field)))
            return seen
        finally:
            await redis.aclose()
            await pool.close()

    assert asyncio.run(scenario()) == [1, 1, 0]
    run_flusher_once(migrated)
    assert counters_in_postgres(migrated.database_url)["item-m"]["comments"] == 0
