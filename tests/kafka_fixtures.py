"""Kafka fixtures on librdkafka's mock cluster (no broker package exists here: docs/design.md, decision 9).

``kafka_cluster`` is a fresh mock cluster per test (3 brokers; auto-created topics get 4 partitions),
so the fixed topic names never carry events between tests. ``consume`` reads N messages back with a
real consumer group from the beginning of a topic.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from daemon.kafka_mock import MockCluster

_rdkafka_log = logging.getLogger("librdkafka.test-consumer")

Record = tuple[bytes | None, bytes | None, int]  # key, value, partition


@pytest.fixture
def kafka_cluster() -> Iterator[MockCluster]:
    with MockCluster(num_brokers=3) as cluster:
        yield cluster


def consume(
    bootstrap_servers: str,
    topic: str,
    n: int,
    timeout_s: float = 30.0,
    group_protocol: str = "consumer",
    headers: bool = False,
) -> list[Any]:
    """Exactly the ``n`` messages of ``topic``, read with a new consumer group from the earliest
    offset; fails if fewer arrive before the deadline, or if the topic holds more than ``n`` (its
    partitions' watermarks: call it once the producers are done). With ``headers``, each record also
    carries the message's headers (a list of (name, bytes)).

    The KIP-848 ``consumer`` group protocol joins the mock cluster's group in ~0.1 s; ``classic``
    works too but waits out the mock coordinator's ~3 s initial rebalance delay."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"test-{uuid.uuid4()}",
            "group.protocol": group_protocol,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "logger": _rdkafka_log,
        }
    )
    records: list[Any] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(records) < n and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=n - len(records), timeout=0.1):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consumer error on {topic}: {err}")
                record = (msg.key(), msg.value(), msg.partition() or 0)
                records.append((*record, msg.headers() or []) if headers else record)
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        held = 0
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            held += high - low
    finally:
        consumer.close()
    if len(records) != n or held != n:
        raise AssertionError(f"read {len(records)} of the {held} messages of {topic}, expected exactly {n}")
    return records
