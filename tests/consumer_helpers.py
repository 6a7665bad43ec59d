"""Helpers of the consumer tests: produce enveloped events to the mock cluster, consumer settings,
and ``engagementd consume`` as a real process (so tests can SIGKILL it)."""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer
from service_fixtures import ROOT, service_env
from service_fixtures import fetch as fetch  # re-exported for the consumer tests

from daemon import keys
from daemon.settings import Settings

_rdkafka_log = logging.getLogger("librdkafka.test-producer")
INGEST = "engagement.ingest"
PUBLISHED = "media.published"
USER_DELETED = "user.deleted"


def envelope(payload: dict[str, Any], /, **overrides: Any) -> bytes:
    event = {
        "event_id": str(uuid.uuid4()),
        "timestamp": "2026-11-22T02:00:00.000Z",
        "source_service": "playback-service",
        "payload": payload,
        **overrides,
    }
    return orjson.dumps(event)


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[str | None, bytes | None]],
    located: list[tuple[int, int]] | None = None,
) -> int:
    """Produce (key, value) records and wait for every acknowledgement; returns how many. ``located``,
    when given, receives each record's (partition, offset), in the order of ``records``."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "logger": _rdkafka_log, "enable.idempotence": True}
    )
    failures: list[str] = []
    where: dict[int, tuple[int, int]] = {}

    def report(i: int, err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
        else:
            where[i] = (msg.partition(), msg.offset())

    n = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=functools.partial(report, n))
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
    assert producer.flush(30) == 0
    assert not failures, failures[:3]
    if located is not None:
        located += (where[i] for i in range(n))
    return n


def fetch_messages(
    bootstrap: str, topic: str, n: int, group_protocol: str = "consumer", timeout_s: float = 30.0
) -> list[Message]:
    """Exactly ``n`` messages of ``topic`` as a consumer of a new group takes them from the earliest
    offset (confluent_kafka ``Message`` objects, to drive consumer/batch.py directly), in partition and
    offset order. ``classic`` waits out the mock coordinator's ~3 s initial rebalance delay."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fetch-{uuid.uuid4().hex[:8]}",
            "group.protocol": group_protocol,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "logger": _rdkafka_log,
        }
    )
    msgs: list[Message] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(msgs) < n and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=n - len(msgs), timeout=0.1):
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(f"consumer error on {topic}: {err}")
                if err is None:
                    msgs.append(msg)
    finally:
        consumer.close()
    assert len(msgs) == n, f"read {len(msgs)} messages of {topic} in {timeout_s}s, expected {n}"
    return sorted(msgs, key=lambda m: (m.partition(), m.offset()))


def consumer_settings(settings: Settings, bootstrap: str, **changes: Any) -> Settings:
    return settings.replace(
        kafka_bootstrap=bootstrap,
        consumer_group=f"g-{uuid.uuid4().hex[:8]}",
        consumer_group_protocol="consumer",  # joins the mock cluster's group at once
        consumer_batch_timeout_ms=50,
        consumer_retry_base_ms=1,
        consumer_retry_max_ms=20,
        rate_limits="",
        **changes,
    )


class ConsumerProcess:
    """``engagementd consume`` as a child process."""

    def __init__(self, settings: Settings, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.proc.cli", "consume", *args],
            env=service_env(settings),
            cwd=ROOT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)


def applied_offsets(settings: Settings) -> dict[str, int]:
    """The consumer group's idempotency store: "<topic>:<partition>" -> last applied offset."""
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        return {k: int(v) for k, v in r.hgetall(keys.consumer_offsets_key(settings.consumer_group)).items()}


def end_offsets(bootstrap: str, topic: str) -> dict[str, int]:
    """ "<topic>:<partition>" -> offset of the last message, for every non-empty partition."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ends", "logger": _rdkafka_log})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        out = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                out[f"{topic}:{p}"] = high - 1
        return out
    finally:
        consumer.close()
