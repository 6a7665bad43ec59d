"""`engagementd consume`: Kafka events through the view buffer and the Lua core, exactly once per offset,
with dead letters for what cannot be applied. Real Redis, Postgres and librdkafka's mock cluster."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter

import httpx
import pytest
import redis
from consumer_helpers import (
    INGEST,
    PUBLISHED,
    USER_DELETED,
    ConsumerProcess,
    applied_offsets,
    consumer_settings,
    end_offsets,
    envelope,
    fetch,
    produce,
)
from kafka_fixtures import consume
from service_fixtures import counters_in_postgres, run_flusher_once, wait_until

from consumer.batch import BatchProcessor
from consumer.loop import ConsumeLoop
from consumer.main import run_consumer
from consumer.store import OffsetStore
from daemon import keys
from daemon.kafka_mock import MockCluster
from daemon.proc.servers import PostgresServer, free_port
from daemon.settings import Settings


def run_once(settings: Settings, **kwargs: object) -> int:
    return asyncio.run(run_consumer(settings, once=True, **kwargs))  # type: ignore[arg-type]


def test_ingest_events_across_partitions_reach_postgres_exactly(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given views, playback signals, likes, dislikes and shares of 50 items by 40 users
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers, consumer_batch_max_messages=700)
    rng = random.Random(5)
    expected: dict[str, Counter[str]] = {}
    records = []
    signal_counters = {"media_completed": "completions", "media_skipped": "skips", "media_replay": "replays"}
    for i in range(6000):
        content_id, user_id = f"c-{rng.randrange(50)}", f"u-{rng.randrange(40)}"
        event_type = rng.choice(["media_started"] * 6 + list(signal_counters))
        payload: dict[str, object] = {"event_type": event_type, "content_id": content_id}
        if i % 2:
            payload["user_id"] = user_id
        counts = expected.setdefault(content_id, Counter())
        if i % 3 == 0:
            payload["watch_duration_seconds"] = 7
            counts["watch_seconds"] += 7
        counts[signal_counters.get(event_type, "views")] += 1
        records.append((user_id, envelope(payload)))
    # likes: each (user, item) pair's last reaction wins; shares count each event
    state: dict[tuple[str, str], int] = {}
    for _ in range(400):
        content_id, user_id = f"c-{rng.randrange(50)}", f"u-{rng.randrange(40)}"
        liked = rng.random() < 0.7
        state[(content_id, user_id)] = 1 if liked else -1
        event_type = "media_liked" if liked else "media_disliked"
        records.append(
            (user_id, envelope({"event_type": event_type, "content_id": content_id, "user_id": user_id}))
        )
    for _ in range(60):
        content_id, user_id = f"c-{rng.randrange(50)}", f"u-{rng.randrange(40)}"
        expected.setdefault(content_id, Counter())["shares"] += 1
        payload = {
            "event_type": "media_shared",
            "content_id": content_id,
            "user_id": user_id,
            "platform": "sms",
        }
        records.append((user_id, envelope(payload)))
    for (content_id, _), value in state.items():
        expected.setdefault(content_id, Counter())["likes" if value == 1 else "dislikes"] += 1
    produce(kafka_cluster.bootstrap_servers, INGEST, records)

    # When the consumer takes all of it, and the flusher writes Redis to Postgres
    assert run_once(settings) == 0
    run_flusher_once(settings)

    # Then every counter is exact, and so are the like records and the share rows
    counters = counters_in_postgres(settings.database_url)
    for content_id, counts in expected.items():
        got = {k: v for k, v in counters[content_id].items() if v}
        assert got == dict(counts), content_id
    likes = fetch(settings.database_url, "SELECT content_id, user_id, value FROM likes")
    assert {(r["content_id"], r["user_id"]): r["value"] for r in likes} == state
    shares = fetch(settings.database_url, "SELECT count(*) AS n FROM shares WHERE platform = 'sms'")
    assert shares[0]["n"] == 60
    # and the idempotency store holds the last offset of every partition
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        applied = r.hgetall(keys.consumer_offsets_key(settings.consumer_group))
        assert sum(int(v) + 1 for v in applied.values()) == len(records)
        assert r.hlen(keys.consumer_journal_key(settings.consumer_group)) == 0


class Killed(BaseException):
    """Stands for a SIGKILL at one point of a batch (BaseException: nothing in the consumer catches it)."""


@pytest.mark.parametrize("crash_point", ["journaled", "applied", "marked"])
def test_a_batch_interrupted_at_any_step_counts_once_after_restart(
    kafka_cluster: MockCluster, migrated: Settings, monkeypatch: pytest.MonkeyPatch, crash_point: str
) -> None:
    # Given 3,000 views and 300 likes, consumed in one batch
    settings = consumer_settings(
        migrated, kafka_cluster.bootstrap_servers, consumer_batch_max_messages=20_000
    )
    views = [
        (f"u{i}", envelope({"event_type": "media_started", "content_id": f"v{i % 7}"})) for i in range(3000)
    ]
    likes = [
        (f"u{i}", envelope({"event_type": "media_liked", "content_id": "v1", "user_id": f"u{i}"}))
        for i in range(300)
    ]
    produce(kafka_cluster.bootstrap_servers, INGEST, views + likes)
    # When the process dies after journaling the drains, after applying them, or after marking the
    # offsets applied but before committing them to Kafka
    target = {
        "journaled": (BatchProcessor, "_drain"),
        "applied": (OffsetStore, "finish"),
        "marked": (ConsumeLoop, "_commit"),
    }[crash_point]

    def die(*args: object, **kwargs: object) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(*target, die)
        with pytest.raises(Killed):
            run_once(settings)
    # and a new consumer of the group starts over from the last commit (none)
    assert run_once(settings) == 0
    run_flusher_once(settings)
    # Then every view and like counts once
    counters = counters_in_postgres(settings.database_url)
    assert sum(c["views"] for c in counters.values()) == 3000
    assert counters["v1"]["likes"] == 300
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        assert r.hlen(keys.consumer_journal_key(settings.consumer_group)) == 0


def test_poison_messages_go_to_the_dead_letter_topic_with_their_error(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    good = envelope({"event_type": "media_started", "content_id": "ok-1"})
    poison = {
        b"not json": "malformed",
        b"[1, 2]": "invalid_envelope",
        envelope({"event_type": "media_started", "content_id": "x"}, payload="nope"): "invalid_envelope",
        envelope({"event_type": "media_started", "content_id": "x"}, event_id=None): "invalid_envelope",
        envelope({"event_type": "media_exploded", "content_id": "x"}): "invalid_event_type",
        envelope({"event_type": "media_started", "content_id": "bad id!"}): "invalid_content_id",
        envelope({"event_type": "media_started"}): "invalid_content_id",
        envelope({"event_type": "media_liked", "content_id": "x"}): "missing_user_id",
        envelope({"event_type": "media_started", "content_id": "x", "user_id": ""}): "invalid_user_id",
        envelope({"event_type": "media_started", "content_id": "x", "watch_duration_seconds": -1}): (
            "invalid_watch_seconds"
        ),
        envelope({"event_type": "media_shared", "content_id": "x", "user_id": "u", "platform": "A B"}): (
            "invalid_platform"
        ),
    }
    records: list[tuple[str | None, bytes | None]] = [("k", good)] * 5
    records += [("k", value) for value in poison]  # one key: one partition, offsets 5 to 15
    records += [("k", good)] * 5
    produce(kafka_cluster.bootstrap_servers, INGEST, records)
    bad_published = envelope({"content_id": "x", "creator_id": "c", "content_type": "FILM"})
    produce(kafka_cluster.bootstrap_servers, PUBLISHED, [("x", bad_published)])

    assert run_once(settings) == 0

    letters = consume(kafka_cluster.bootstrap_servers, f"{INGEST}.dlq", len(poison), headers=True)
    found = {value: dict(headers) for _, value, _, headers in letters}
    assert {value: h["error"].decode() for value, h in found.items()} == poison
    assert sorted(int(h["original_offset"]) for h in found.values()) == list(range(5, 5 + len(poison)))
    assert len({h["original_partition"] for h in found.values()}) == 1
    for h in found.values():
        assert h["original_topic"] == INGEST.encode() and h["attempts"] == b"0"
        assert h["error_message"] and h["consumer_group"] == settings.consumer_group.encode()
    (letter,) = consume(kafka_cluster.bootstrap_servers, f"{PUBLISHED}.dlq", 1, headers=True)
    assert letter[1] == bad_published and dict(letter[3])["error"] == b"invalid_content_type"
    run_flusher_once(settings)
    assert counters_in_postgres(settings.database_url)["ok-1"]["views"] == 10


def test_media_published_fills_the_content_registry(kafka_cluster: MockCluster, migrated: Settings) -> None:
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    payload = {"content_id": "vid-9", "creator_id": "studio-2", "title": "T", "content_type": "VIDEO"}
    later = {**payload, "creator_id": "studio-3", "content_type": "AUDIO", "categories": ["x"]}
    produce(
        kafka_cluster.bootstrap_servers, PUBLISHED, [("vid-9", envelope(payload)), ("vid-9", envelope(later))]
    )

    assert run_once(settings) == 0

    rows = fetch(settings.database_url, "SELECT content_id, creator_id, content_type FROM content_registry")
    assert [tuple(r) for r in rows] == [("vid-9", "studio-3", "AUDIO")]
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        shard = keys.shard_of("vid-9", settings.shards)
        # the Redis copy is a string key of its own, with its idle TTL (a cold key: docs/redis-memory.md)
        key = keys.registry_key(shard, "vid-9")
        assert r.get(key) == "studio-3|AUDIO"
        assert 0 < r.ttl(key) <= settings.counts_idle_ttl_s


def test_user_deleted_runs_the_purge_once_per_message(kafka_cluster: MockCluster, migrated: Settings) -> None:
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    purged: list[str] = []

    async def purge_user(user_id: str) -> dict:
        purged.append(user_id)
        return {"user_id": user_id}

    users = [f"gone-{i}" for i in range(12)]
    records = [(u, envelope({"user_id": u})) for u in users] + [("x", envelope({"user_id": "no spaces"}))]
    produce(kafka_cluster.bootstrap_servers, USER_DELETED, records)

    assert run_once(settings, purge_user=purge_user) == 0
    assert sorted(purged) == sorted(users)
    ((_, value, _, headers),) = consume(
        kafka_cluster.bootstrap_servers, f"{USER_DELETED}.dlq", 1, headers=True
    )
    assert dict(headers)["error"] == b"invalid_user_id"

    # a second run of the same group finds nothing new: no purge runs again
    assert run_once(settings, purge_user=purge_user) == 0
    assert len(purged) == len(users)


def test_a_failing_handler_is_retried_then_dead_lettered(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    calls: Counter[str] = Counter()

    async def purge_user(user_id: str) -> dict:
        calls[user_id] += 1
        if user_id == "cursed":
            raise RuntimeError("purge exploded")
        if user_id == "flaky" and calls[user_id] < 3:
            raise ValueError("not yet")
        return {}

    records = [(u, envelope({"user_id": u})) for u in ("fine", "cursed", "flaky")]
    produce(kafka_cluster.bootstrap_servers, USER_DELETED, records)

    assert run_once(settings, purge_user=purge_user) == 0

    assert calls == {"fine": 1, "cursed": 10, "flaky": 3}
    ((_, value, _, headers),) = consume(
        kafka_cluster.bootstrap_servers, f"{USER_DELETED}.dlq", 1, headers=True
    )
    assert value == records[1][1]
    h = dict(headers)
    assert h["error"] == b"handler_failed" and h["attempts"] == b"10"
    assert h["error_message"] == b"RuntimeError: purge exploded"


@pytest.mark.parametrize(
    "bad_setting", [{"consumer_batch_max_messages": 0}, {"consumer_group_protocol": "x"}]
)
def test_bad_consumer_settings_are_refused(bad_setting: dict) -> None:
    from daemon.settings import SettingsError

    with pytest.raises(SettingsError):
        Settings.from_env({}, **bad_setting)


def test_kafka_views_count_unique_viewers_and_user_deleted_purges_for_real(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given views and likes of two users arriving over Kafka (ann views k-1 three times)
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    events = [("ann", {"event_type": "media_started", "content_id": "k-1", "user_id": "ann"})] * 3
    events += [
        ("bob", {"event_type": "media_started", "content_id": "k-1", "user_id": "bob"}),
        ("ann", {"event_type": "media_liked", "content_id": "k-1", "user_id": "ann"}),
        ("bob", {"event_type": "media_liked", "content_id": "k-1", "user_id": "bob"}),
    ]
    produce(kafka_cluster.bootstrap_servers, INGEST, [(k, envelope(p)) for k, p in events])
    assert run_once(settings) == 0
    run_flusher_once(settings)
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        shard = keys.shard_of("k-1", settings.shards)
        assert r.pfcount(keys.uv_key(shard, "k-1")) == 2  # two distinct viewers of four views
    assert counters_in_postgres(settings.database_url)["k-1"]["likes"] == 2

    # When user.deleted names ann, and the consumer runs with the real purge (daemon/purge.py)
    produce(kafka_cluster.bootstrap_servers, USER_DELETED, [("ann", envelope({"user_id": "ann"}))])
    assert run_once(settings) == 0
    run_flusher_once(settings)

    # Then ann's like is gone and counted out; bob's stays; views are events and stay
    row = counters_in_postgres(settings.database_url)["k-1"]
    assert (row["views"], row["likes"]) == (4, 1)
    likes = fetch(settings.database_url, "SELECT user_id FROM likes WHERE content_id = 'k-1'")
    assert [r["user_id"] for r in likes] == ["bob"]


def test_kafka_views_estimate_unique_viewers_within_two_percent_past_the_api_per_drain_cap(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given 30,000 distinct users viewing one item twice each, consumed in batches of up to 60,000
    # (three times the api's 10,000 user ids per item per drain), and 10 users viewing another 5 times
    settings = consumer_settings(
        migrated.replace(unique_viewers_day="2026-02-01"),
        kafka_cluster.bootstrap_servers,
        consumer_batch_max_messages=60_000,
    ).replace(consumer_batch_timeout_ms=2_000)
    assert settings.buffer_viewers_max_per_item == 10_000
    views = [("hll-big", f"viewer-{u}") for _ in range(2) for u in range(30_000)]
    views += [("hll-small", f"few-{u}") for _ in range(5) for u in range(10)]
    produce(
        kafka_cluster.bootstrap_servers,
        INGEST,
        [(u, envelope({"event_type": "media_started", "content_id": c, "user_id": u})) for c, u in views],
    )

    assert run_once(settings) == 0
    run_flusher_once(settings)

    # Then the views are exact and every user id reached the HLLs: 30,000 within 2% (standard error
    # 0.81%), the small set exactly, the same figures for the day and all time
    counters = counters_in_postgres(settings.database_url)
    assert (counters["hll-big"]["views"], counters["hll-small"]["views"]) == (60_000, 50)
    all_time = dict(
        fetch(settings.database_url, "SELECT content_id, unique_viewers FROM content_unique_viewers")
    )
    daily = fetch(
        settings.database_url, "SELECT content_id, day, unique_viewers FROM content_unique_viewers_daily"
    )
    assert all_time["hll-small"] == 10
    assert abs(all_time["hll-big"] - 30_000) <= 600, all_time
    assert {(r["content_id"], str(r["day"]), r["unique_viewers"]) for r in daily} == {
        ("hll-big", "2026-02-01", all_time["hll-big"]),
        ("hll-small", "2026-02-01", 10),
    }


def test_a_batch_with_more_items_than_the_api_buffer_bound_is_applied(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given 3,000 views of 1,500 distinct items, and a consumer whose batches (up to 5,000 messages)
    # exceed ENGAGEMENT_BUFFER_MAX_ITEMS (the api's bound, 1,000 here)
    settings = consumer_settings(
        migrated.replace(buffer_max_items=1_000),
        kafka_cluster.bootstrap_servers,
        consumer_batch_max_messages=5_000,
    ).replace(consumer_batch_timeout_ms=2_000)
    records = [
        (None, envelope({"event_type": "media_started", "content_id": f"wide-{i % 1500}"}))
        for i in range(3000)
    ]
    produce(kafka_cluster.bootstrap_servers, INGEST, records)

    # Then they are applied (the batch bounds the consumer's buffer), exactly
    assert run_once(settings) == 0
    run_flusher_once(settings)
    counters = counters_in_postgres(settings.database_url)
    assert {c: counts["views"] for c, counts in counters.items()} == {f"wide-{i}": 2 for i in range(1500)}


def test_server_errors_that_are_not_outages_are_retried_then_dead_lettered(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given a share and a user deletion that Postgres answers with an error (its shares table renamed
    # away: the server is up, the statement fails), next to a view
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    fetch(settings.database_url, "ALTER TABLE shares RENAME TO shares_elsewhere")
    share = envelope({"event_type": "media_shared", "content_id": "s-1", "user_id": "ann", "platform": "x"})
    view = envelope({"event_type": "media_started", "content_id": "s-1"})
    produce(kafka_cluster.bootstrap_servers, INGEST, [("ann", share), ("ann", view)])
    produce(kafka_cluster.bootstrap_servers, USER_DELETED, [("ann", envelope({"user_id": "ann"}))])

    # When the consumer runs (bounded: a failure taken for an outage would be retried forever)
    assert asyncio.run(asyncio.wait_for(run_consumer(settings, once=True), 120)) == 0

    # Then each failing message is tried 10 times and dead-lettered with the server's error, and the
    # view is counted
    for topic, value in ((INGEST, share), (USER_DELETED, envelope({"user_id": "ann"}))):
        ((_, got, _, headers),) = consume(kafka_cluster.bootstrap_servers, f"{topic}.dlq", 1, headers=True)
        h = dict(headers)
        assert (h["error"], h["attempts"]) == (b"handler_failed", b"10"), topic
        assert b"UndefinedTableError" in h["error_message"], h["error_message"]
        if topic == INGEST:
            assert got == value
    fetch(settings.database_url, "ALTER TABLE shares_elsewhere RENAME TO shares")
    run_flusher_once(settings)
    assert counters_in_postgres(settings.database_url)["s-1"]["views"] == 1


def test_postgres_down_retries_shares_and_purges_without_counting_tries_until_it_returns(
    kafka_cluster: MockCluster, migrated: Settings, pg_server: PostgresServer
) -> None:
    # Given ann's like, applied and flushed to Postgres
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers, log_level="ERROR")
    like = {"event_type": "media_liked", "content_id": "o-1", "user_id": "ann"}
    produce(kafka_cluster.bootstrap_servers, INGEST, [("ann", envelope(like))])
    assert run_once(settings) == 0
    run_flusher_once(settings)
    assert counters_in_postgres(settings.database_url)["o-1"]["likes"] == 1
    # and then a share by bob and ann's deletion (topics apart: Kafka does not order them), consumed
    # while Postgres is stopped
    share = {"event_type": "media_shared", "content_id": "o-1", "user_id": "bob", "platform": "x"}
    produce(kafka_cluster.bootstrap_servers, INGEST, [("bob", envelope(share))])
    produce(kafka_cluster.bootstrap_servers, USER_DELETED, [("ann", envelope({"user_id": "ann"}))])
    ends = {
        **end_offsets(kafka_cluster.bootstrap_servers, INGEST),
        **end_offsets(kafka_cluster.bootstrap_servers, USER_DELETED),
    }
    pg_server.stop()
    metrics_port = free_port()
    proc = ConsumerProcess(settings, "--metrics-port", str(metrics_port))
    try:
        # When the consumer has retried far more than 10 times, and Postgres then returns
        wait_until(lambda: _unavailable_retries(metrics_port) >= 50, 60, "50 retries while Postgres is down")
        pg_server.start()
        wait_until(lambda: applied_offsets(settings) == ends, 60, "every partition applied")
        assert proc.stop() == 0
    finally:
        proc.kill()
        if not pg_server.is_running():
            pg_server.start()

    # Then nothing was dead-lettered, the share is one row, and ann's like is purged
    for topic in (INGEST, USER_DELETED):
        assert end_offsets(kafka_cluster.bootstrap_servers, f"{topic}.dlq") == {}
    assert [tuple(r) for r in fetch(settings.database_url, "SELECT user_id, content_id FROM shares")] == [
        ("bob", "o-1")
    ]
    run_flusher_once(settings)
    row = counters_in_postgres(settings.database_url)["o-1"]
    assert (row["likes"], row["shares"]) == (0, 1)


def _unavailable_retries(metrics_port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    except httpx.TransportError:
        return 0.0
    found = re.search(r'^engagement_consumer_retries_total\{reason="unavailable"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0
