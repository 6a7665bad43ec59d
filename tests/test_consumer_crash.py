"""The consumer SIGKILLed mid-stream and restarted, twice: exact totals in Postgres; SIGTERM commits
and leaves the group, and mid-stream finishes and commits the batch in hand; /metrics on
--metrics-port."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from consumer_helpers import (
    INGEST,
    ConsumerProcess,
    applied_offsets,
    consumer_settings,
    end_offsets,
    envelope,
    produce,
)
from seeds import seeded_random
from service_fixtures import counters_in_postgres, run_flusher_once, wait_until

from daemon import keys
from daemon.kafka_mock import MockCluster
from daemon.proc.servers import free_port
from daemon.settings import Settings

EVENTS = 40_000
SIGNALS = {"media_completed": "completions", "media_skipped": "skips", "media_replay": "replays"}


def _events(rng: random.Random) -> tuple[list[tuple[str, bytes]], dict[str, Counter[str]]]:
    records, expected = [], {}
    for i in range(EVENTS):
        content_id, user_id = f"item-{rng.randrange(300)}", f"user-{rng.randrange(2000)}"
        event_type = rng.choice(["media_started"] * 8 + list(SIGNALS))
        payload: dict[str, object] = {"event_type": event_type, "content_id": content_id, "user_id": user_id}
        counts = expected.setdefault(content_id, Counter())
        if i % 4 == 0:
            payload["watch_duration_seconds"] = 30
            counts["watch_seconds"] += 30
        counts[SIGNALS.get(event_type, "views")] += 1
        records.append((user_id, envelope(payload)))
    for i in range(500):  # likes of distinct (user, item) pairs
        content_id, user_id = f"item-{i % 300}", f"liker-{i}"
        expected.setdefault(content_id, Counter())["likes"] += 1
        records.append(
            (user_id, envelope({"event_type": "media_liked", "content_id": content_id, "user_id": user_id}))
        )
    return records, expected


def _progress(settings: Settings) -> int:
    return sum(offset + 1 for offset in applied_offsets(settings).values())


def _committed(bootstrap: str, settings: Settings, fields: list[str]) -> dict[str, int]:
    """The group's committed offsets as "<topic>:<partition>" -> last offset committed, for the
    partitions with a commit."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": settings.consumer_group})
    try:
        parts = [TopicPartition(INGEST, int(field.rsplit(":", 1)[1])) for field in fields]
        return {
            f"{tp.topic}:{tp.partition}": tp.offset - 1
            for tp in consumer.committed(parts, timeout=10)
            if tp.offset >= 0
        }
    finally:
        consumer.close()


def _views_in_postgres(settings: Settings) -> dict[str, int]:
    run_flusher_once(settings)
    counters = counters_in_postgres(settings.database_url)
    return {content_id: c["views"] for content_id, c in counters.items() if c["views"]}


@pytest.fixture
def processes() -> Iterator[list[ConsumerProcess]]:
    started: list[ConsumerProcess] = []
    yield started
    for proc in started:
        proc.kill()


@pytest.mark.slow
def test_consumer_killed_twice_mid_stream_counts_every_event_exactly_once(
    kafka_cluster: MockCluster, migrated: Settings, processes: list[ConsumerProcess]
) -> None:
    # Given 40,500 events on 4 partitions
    records, expected = _events(random.Random(11))
    total = produce(kafka_cluster.bootstrap_servers, INGEST, records)
    ends = end_offsets(kafka_cluster.bootstrap_servers, INGEST)
    assert len(ends) == 4 and sum(o + 1 for o in ends.values()) == total
    settings = consumer_settings(
        migrated, kafka_cluster.bootstrap_servers, consumer_batch_max_messages=400, log_level="WARNING"
    )
    rng = seeded_random("kill points")

    # When the consumer is SIGKILLed twice while it works, at random points of its batches
    for share in (rng.uniform(0.1, 0.3), rng.uniform(0.45, 0.65)):
        proc = ConsumerProcess(settings)
        processes.append(proc)
        wait_until(lambda s=share: _progress(settings) >= s * total, 60, f"{share:.0%} of the events applied")
        proc.kill()  # wherever the batch loop is: journaling, applying, marking or committing
    assert _progress(settings) < total, "the consumer finished before the second kill"

    # and a third consumer runs until every partition is applied to its end, then gets SIGTERM
    # (partitions a killed member held move to it once the mock coordinator expires that member)
    proc = ConsumerProcess(settings)
    processes.append(proc)
    wait_until(lambda: applied_offsets(settings) == ends, 120, "every partition applied to its end")
    assert proc.stop() == 0

    # Then Postgres holds exact totals
    run_flusher_once(settings)
    counters = counters_in_postgres(settings.database_url)
    for content_id, counts in expected.items():
        assert {k: v for k, v in counters[content_id].items() if v} == dict(counts), content_id


def test_sigterm_commits_the_batch_and_leaves_the_group_and_metrics_count_it(
    kafka_cluster: MockCluster, migrated: Settings, processes: list[ConsumerProcess]
) -> None:
    # Given 5,000 views and 3 poison messages consumed by one process with --metrics-port
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers, consumer_batch_max_messages=1000)
    views = [
        (f"u{i}", envelope({"event_type": "media_started", "content_id": f"v{i % 9}"})) for i in range(5000)
    ]
    total = produce(kafka_cluster.bootstrap_servers, INGEST, views + [("p", b"{")] * 3)
    ends = end_offsets(kafka_cluster.bootstrap_servers, INGEST)
    metrics_port = free_port()
    proc = ConsumerProcess(settings, "--metrics-port", str(metrics_port))
    processes.append(proc)
    wait_until(lambda: applied_offsets(settings) == ends, 60, "every partition applied to its end")

    def samples() -> dict[str, float]:
        try:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        except httpx.TransportError:
            return {}
        return {m[1]: float(m[2]) for m in re.finditer(r"^(engagement_consumer_\S+) (\S+)$", text, re.M)}

    def lag_zero_on_four_partitions() -> bool:
        lags = [v for name, v in samples().items() if name.startswith("engagement_consumer_lag_messages{")]
        return len(lags) == 4 and not any(lags)

    wait_until(lag_zero_on_four_partitions, 30, "a consumer lag of 0 on the 4 partitions")
    got = samples()
    topic = f'{{topic="{INGEST}"}}'
    assert got[f"engagement_consumer_events_total{topic}"] == total
    assert got[f"engagement_consumer_applied_total{topic}"] == 5000
    assert got[f'engagement_consumer_dead_letters_total{{reason="malformed",topic="{INGEST}"}}'] == 3
    assert got["engagement_consumer_batch_duration_seconds_count"] >= 1

    # When it gets SIGTERM
    assert proc.stop() == 0

    # Then its offsets are committed to the end of every partition
    assert _committed(kafka_cluster.bootstrap_servers, settings, list(ends)) == ends
    # and it left the group: a new member takes every partition at once and finds nothing to apply
    nxt = ConsumerProcess(settings, "--once")
    processes.append(nxt)
    assert nxt.proc.wait(timeout=60) == 0
    run_flusher_once(settings)
    assert sum(c["views"] for c in counters_in_postgres(settings.database_url).values()) == 5000


def test_sigterm_mid_stream_finishes_the_batch_in_hand_and_commits_it(
    kafka_cluster: MockCluster, migrated: Settings, processes: list[ConsumerProcess]
) -> None:
    # Given 60,000 views of 300 items on 4 partitions, each record's partition and offset known,
    # consumed in batches of at most 2,000
    rng = random.Random(7)
    content_ids = [f"item-{rng.randrange(300)}" for _ in range(60_000)]
    records = [
        (f"user-{i}", envelope({"event_type": "media_started", "content_id": content_id}))
        for i, content_id in enumerate(content_ids)
    ]
    bootstrap = kafka_cluster.bootstrap_servers
    located: list[tuple[int, int]] = []
    produce(bootstrap, INGEST, records, located)
    ends = end_offsets(bootstrap, INGEST)
    total = len(records)
    assert len(ends) == 4 and sum(o + 1 for o in ends.values()) == total
    settings = consumer_settings(migrated, bootstrap, consumer_batch_max_messages=2000, log_level="WARNING")
    proc = ConsumerProcess(settings)
    processes.append(proc)
    wait_until(lambda: _progress(settings) >= 0.1 * total, 60, "10% of the views applied")

    # When it gets SIGTERM mid-stream
    assert proc.stop() == 0

    # Then what it applied is what it committed, on every partition, and the stream is not finished
    committed = _committed(bootstrap, settings, list(ends))
    assert committed == applied_offsets(settings)
    assert sum(o + 1 for o in committed.values()) < total, "the consumer finished before SIGTERM"
    # and no batch is left journaled or reserved beyond what is applied: the batch in hand was finished
    group = settings.consumer_group
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        assert r.hlen(keys.consumer_journal_key(group)) == 0
        assert r.hlen(keys.consumer_journal_ranges_key(group)) == 0
        claims = {k: int(v) for k, v in r.hgetall(keys.consumer_claims_key(group)).items()}
    assert claims == committed
    # and the views counted are exactly those of the committed messages, item by item
    done = Counter(
        content_id
        for content_id, (partition, offset) in zip(content_ids, located, strict=True)
        if offset <= committed.get(f"{INGEST}:{partition}", -1)
    )
    assert _views_in_postgres(settings) == dict(done)

    # When a second consumer runs to the end of every partition
    proc = ConsumerProcess(settings)
    processes.append(proc)
    wait_until(lambda: applied_offsets(settings) == ends, 120, "every partition applied to its end")
    assert proc.stop() == 0

    # Then Postgres holds every view exactly once, item by item
    assert _views_in_postgres(settings) == dict(Counter(content_ids))


@pytest.mark.slow
def test_two_consumers_of_a_classic_group_rebalance_mid_stream_and_count_every_event_once(
    kafka_cluster: MockCluster, migrated: Settings, processes: list[ConsumerProcess]
) -> None:
    # Given 40,500 events on 4 partitions and two consumers of one group on the classic protocol
    # (eager rebalances: the default, and what docker-compose's Kafka runs)
    records, expected = _events(random.Random(5))
    total = produce(kafka_cluster.bootstrap_servers, INGEST, records)
    ends = end_offsets(kafka_cluster.bootstrap_servers, INGEST)
    settings = consumer_settings(
        migrated, kafka_cluster.bootstrap_servers, consumer_batch_max_messages=500, log_level="WARNING"
    ).replace(consumer_group_protocol="classic")
    first, second = ConsumerProcess(settings), ConsumerProcess(settings)
    processes += [first, second]

    # When one of them leaves mid-stream (its partitions move to the other, which is applying)
    wait_until(lambda: _progress(settings) >= 0.3 * total, 90, "30% of the events applied")
    assert first.stop() == 0
    assert _progress(settings) < total, "the stream ended before the rebalance"

    # Then the other one applies every partition to its end, and Postgres holds exact totals
    wait_until(lambda: applied_offsets(settings) == ends, 120, "every partition applied to its end")
    assert second.stop() == 0
    run_flusher_once(settings)
    counters = counters_in_postgres(settings.database_url)
    for content_id, counts in expected.items():
        assert {k: v for k, v in counters[content_id].items() if v} == dict(counts), content_id
