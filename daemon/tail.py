"""``engagementd events tail``: the engagement events the api publishes, one JSON line each, for watching
them in dev (``ENGAGEMENT_KAFKA_BOOTSTRAP=mock make run`` prints the mock cluster's address) or in
production. A consumer outside any group (no offsets committed, nothing taken from other consumers)."""

from __future__ import annotations

import json
import signal
import sys
import uuid

from daemon.events import SUBSCRIPTION_CHANGED, USER_ENGAGEMENT_EVENTS


def run_tail(bootstrap: str, topics: list[str] | None, from_beginning: bool, limit: int) -> int:
    from confluent_kafka import Consumer, KafkaError

    if not bootstrap or bootstrap == "mock":
        print(
            "engagementd events tail: give the Kafka servers (--bootstrap, or ENGAGEMENT_KAFKA_BOOTSTRAP;"
            " with make run and mock, the address it prints)",
            file=sys.stderr,
        )
        return 2
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"engagementd-tail-{uuid.uuid4().hex[:8]}",  # a group of its own, never committed
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "topic.metadata.refresh.interval.ms": 1000,  # follow topics created after the start
        }
    )
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    consumer.subscribe(topics or [USER_ENGAGEMENT_EVENTS, SUBSCRIPTION_CHANGED])
    seen = 0
    try:
        while not stop and (limit <= 0 or seen < limit):
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    print(f"engagementd events tail: {message.error()}", file=sys.stderr)
                continue
            value = message.value() or b""
            try:
                event = json.loads(value)
            except ValueError:
                event = value.decode("utf-8", "replace")
            key = message.key().decode("utf-8", "replace") if message.key() else None
            line = {
                "topic": message.topic(),
                "partition": message.partition(),
                "offset": message.offset(),
                "key": key,
                "event": event,
            }
            print(json.dumps(line, ensure_ascii=False), flush=True)
            seen += 1
    finally:
        consumer.close()
    return 0
