"""EventProducer against librdkafka's mock cluster: envelope, keys, partitions, bounds, failures."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest
from kafka_fixtures import consume

from daemon.events import (
    EVENT_TYPES,
    SUBSCRIPTION_CHANGED,
    USER_ENGAGEMENT_EVENTS,
    EventProducer,
    envelope,
    utc_timestamp,
)
from daemon.kafka_mock import MockCluster
from daemon.metrics import Metrics
from daemon.proc.childproc import free_port
from daemon.settings import Settings

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def engagement(user: int, seq: int, event_type: str = "media_liked") -> dict[str, object]:
    return {
        "user_id": f"user-{user}",
        "content_id": f"content-{seq % 7}",
        "creator_id": f"creator-{seq % 3}",
        "event_type": event_type,
        "watch_duration_seconds": seq if event_type == "media_completed" else None,
        "content_type": "VIDEO",
        "session_id": f"session-{user}",
        "seq": seq,
    }


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def dropped(metrics: Metrics, topic: str, reason: str) -> float:
    return sample(metrics, "engagement_events_dropped_total", topic=topic, reason=reason)


def total(metrics: Metrics, name: str) -> float:
    """Sum of every sample of ``name`` across its labels."""
    return sum(s.value for fam in metrics.registry.collect() for s in fam.samples if s.name == name)


async def wait_for(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_envelope() -> None:
    event = envelope({"a": 1})
    assert set(event) == {"event_id", "timestamp", "source_service", "payload"}
    assert uuid.UUID(event["event_id"]).version == 4
    assert TS.match(event["timestamp"])
    parsed = datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - time.time()) < 5
    assert event["source_service"] == "engagement-service" and event["payload"] == {"a": 1}
    assert envelope({}, source_service="x")["source_service"] == "x"
    assert utc_timestamp(1_700_000_000.5) == "2023-11-14T22:13:20.500Z"
    assert utc_timestamp(1_700_000_001.0429) == "2023-11-14T22:13:21.042Z"
    assert len(EVENT_TYPES) == 8


async def test_events_read_back_enveloped_keyed_and_partitioned(kafka_cluster: MockCluster) -> None:
    metrics = Metrics(roles=("api",))
    producer = EventProducer(Settings(kafka_bootstrap=kafka_cluster.bootstrap_servers), metrics)
    await producer.start()
    types = sorted(EVENT_TYPES)
    sent = [engagement(u, s, types[(u + s) % len(types)]) for s in range(5) for u in range(12)]
    for payload in sent:
        producer.emit(USER_ENGAGEMENT_EVENTS, str(payload["user_id"]), payload)
    subs = [
        {"user_id": f"user-{u}", "creator_id": f"creator-{u % 4}", "action": "SUBSCRIBED"} for u in range(8)
    ]
    for payload in subs:
        producer.emit(SUBSCRIPTION_CHANGED, payload["creator_id"], payload)
    assert await producer.close(timeout_s=15) == 0

    records = await asyncio.to_thread(consume, kafka_cluster.bootstrap_servers, USER_ENGAGEMENT_EVENTS, 60)
    events = [orjson.loads(value) for _, value, _ in records]
    assert len({e["event_id"] for e in events}) == 60
    for (key, _, _), event in zip(records, events, strict=True):
        assert uuid.UUID(event["event_id"]).version == 4
        assert TS.match(event["timestamp"])
        assert event["source_service"] == "engagement-service"
        assert key == event["payload"]["user_id"].encode()
    assert sorted(orjson.dumps(e["payload"]) for e in events) == sorted(orjson.dumps(p) for p in sent)
    partitions: dict[bytes | None, set[int]] = defaultdict(set)
    order: dict[bytes | None, list[int]] = defaultdict(list)
    for (key, _, partition), event in zip(records, events, strict=True):
        partitions[key].add(partition)
        order[key].append(event["payload"]["seq"])
    assert all(len(p) == 1 for p in partitions.values()), "one key, one partition"
    assert len(set().union(*partitions.values())) > 1, "keys spread over several partitions"
    assert all(seqs == sorted(seqs) for seqs in order.values()), "per-key order kept"

    sub_records = await asyncio.to_thread(consume, kafka_cluster.bootstrap_servers, SUBSCRIPTION_CHANGED, 8)
    sub_events = [orjson.loads(value) for _, value, _ in sub_records]
    assert sorted(orjson.dumps(e["payload"]) for e in sub_events) == sorted(orjson.dumps(p) for p in subs)
    for (key, _, _), event in zip(sub_records, sub_events, strict=True):
        assert key == event["payload"]["creator_id"].encode()
    sub_partitions: dict[bytes | None, set[int]] = defaultdict(set)
    for key, _, partition in sub_records:
        sub_partitions[key].add(partition)
    assert all(len(p) == 1 for p in sub_partitions.values())

    assert sample(metrics, "engagement_events_produced_total", topic=USER_ENGAGEMENT_EVENTS) == 60
    assert sample(metrics, "engagement_events_delivered_total", topic=USER_ENGAGEMENT_EVENTS) == 60
    assert sample(metrics, "engagement_events_delivered_total", topic=SUBSCRIPTION_CHANGED) == 8
    assert total(metrics, "engagement_events_dropped_total") == 0
    assert producer.stats.delivered == 68 and producer.stats.dropped == 0


async def test_mock_mode_starts_its_own_cluster() -> None:
    producer = EventProducer(Settings(kafka_bootstrap="mock"), Metrics(roles=("api",)))
    assert producer.enabled and producer.bootstrap_servers.count("127.0.0.1:") == 3
    await producer.start()
    for i in range(5):
        producer.emit(USER_ENGAGEMENT_EVENTS, f"user-{i}", engagement(i, i))
    await wait_for(lambda: producer.stats.delivered == 5)
    records = await asyncio.to_thread(consume, producer.bootstrap_servers, USER_ENGAGEMENT_EVENTS, 5)
    assert sorted(key or b"" for key, _, _ in records) == [f"user-{i}".encode() for i in range(5)]
    assert await producer.close(timeout_s=5) == 0


async def test_disabled_producer_is_a_noop(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(roles=("api",))
    producer = EventProducer(Settings(kafka_bootstrap=""), metrics)
    assert not producer.enabled and producer.bootstrap_servers == ""
    with caplog.at_level(logging.WARNING, logger="daemon.events"):
        await producer.start()
    assert [r.levelno for r in caplog.records if r.name == "daemon.events"] == [logging.WARNING]
    for i in range(10_000):
        producer.emit(USER_ENGAGEMENT_EVENTS, "user-1", {"i": i})
    assert producer.stats.produced == 0
    # its metrics exist (the dashboard's panels show zeros), all at zero
    samples = [
        s for f in metrics.registry.collect() if f.name.startswith("engagement_events") for s in f.samples
    ]
    assert samples and {s.value for s in samples if not s.name.endswith("_created")} == {0.0}
    assert await producer.close(timeout_s=1) == 0


@pytest.mark.parametrize("retry_max", [None, 200])
async def test_tiny_local_queue_never_raises_and_accounts_for_every_event(
    kafka_cluster: MockCluster, retry_max: int | None
) -> None:
    metrics = Metrics(roles=("api",))
    producer = EventProducer(
        Settings(kafka_bootstrap=kafka_cluster.bootstrap_servers),
        metrics,
        config={"queue.buffering.max.messages": 10},
        retry_max_events=retry_max,
    )
    await producer.start()
    for i in range(1_000):  # no await: the background task cannot drain meanwhile
        producer.emit(USER_ENGAGEMENT_EVENTS, f"user-{i % 10}", engagement(i % 10, i))
    stats = producer.stats
    assert stats.produced == 1_000 and stats.queue_full > 0
    assert stats.delivered + stats.dropped + producer.pending == 1_000
    assert await producer.close(timeout_s=30) == 0
    assert stats.delivered + stats.dropped == 1_000 and producer.pending == 0
    if retry_max is None:
        assert stats.delivered == 1_000
    else:
        assert stats.dropped >= 1_000 - 10 - retry_max
        assert dropped(metrics, USER_ENGAGEMENT_EVENTS, "retry_queue_full") == stats.dropped
    assert total(metrics, "engagement_events_delivered_total") == stats.delivered
    assert total(metrics, "engagement_events_dropped_total") == stats.dropped
    assert total(metrics, "engagement_events_queue_full_total") == stats.queue_full
    assert sample(metrics, "engagement_events_retry_queue") == 0
    records = await asyncio.to_thread(
        consume, kafka_cluster.bootstrap_servers, USER_ENGAGEMENT_EVENTS, stats.delivered
    )
    order: dict[bytes | None, list[int]] = defaultdict(list)
    for key, value, _ in records:
        order[key].append(orjson.loads(value)["payload"]["seq"])
    assert all(seqs == sorted(seqs) for seqs in order.values()), "FIFO through the retry queue"


async def test_unreachable_broker_never_raises_and_close_counts_undelivered() -> None:
    metrics = Metrics(roles=("api",))
    producer = EventProducer(Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}"), metrics)
    await producer.start()
    for i in range(25):
        producer.emit(SUBSCRIPTION_CHANGED, f"creator-{i}", {"user_id": "u", "creator_id": f"creator-{i}"})
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert await producer.close(timeout_s=1) == 25
    assert time.monotonic() - started < 10  # generous: the deadline holds, no hang
    assert producer.stats.delivered == 0 and producer.stats.dropped == 25
    assert dropped(metrics, SUBSCRIPTION_CHANGED, "shutdown") == 25
    assert sample(metrics, "engagement_events_in_flight") == 0
    producer.emit(SUBSCRIPTION_CHANGED, "creator-x", {})  # after close: counted, not raised
    assert producer.stats.dropped == 26


async def test_failed_deliveries_are_retried_then_dropped() -> None:
    metrics = Metrics(roles=("api",))
    producer = EventProducer(
        Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}"), metrics, config={"message.timeout.ms": 150}
    )
    await producer.start()
    for i in range(4):
        producer.emit(USER_ENGAGEMENT_EVENTS, f"user-{i}", engagement(i, i))
    await wait_for(lambda: producer.stats.dropped == 4)
    assert producer.stats.delivery_failures == 12  # 3 attempts each
    assert sample(metrics, "engagement_events_delivery_failures_total", topic=USER_ENGAGEMENT_EVENTS) == 12
    assert dropped(metrics, USER_ENGAGEMENT_EVENTS, "attempts_exhausted") == 4
    assert await producer.close(timeout_s=1) == 0


async def test_unserializable_payload_is_counted_not_raised(kafka_cluster: MockCluster) -> None:
    producer = EventProducer(Settings(kafka_bootstrap=kafka_cluster.bootstrap_servers), Metrics())
    producer.emit(USER_ENGAGEMENT_EVENTS, "user-1", {"bad": object()})
    assert producer.stats.dropped == 1
    assert await producer.close(timeout_s=1) == 0


async def test_two_producers_on_two_metrics_objects(kafka_cluster: MockCluster) -> None:
    settings = Settings(kafka_bootstrap=kafka_cluster.bootstrap_servers)
    first, second = Metrics(roles=("api",)), Metrics(roles=("api",))
    producers = [EventProducer(settings, first), EventProducer(settings, second)]
    for p in producers:
        await p.start()
        p.emit(USER_ENGAGEMENT_EVENTS, "user-1", engagement(1, 1))
    assert [await p.close(timeout_s=10) for p in producers] == [0, 0]
    for m in (first, second):
        assert sample(m, "engagement_events_delivered_total", topic=USER_ENGAGEMENT_EVENTS) == 1
