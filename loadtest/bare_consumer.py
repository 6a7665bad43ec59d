"""The consumer benchmark's reference: a bare confluent-kafka consume loop that only decodes messages.

    python -m loadtest.bare_consumer --bootstrap HOST:PORT --topic T1,T2,... --events N [--batch 10000]

It joins a new consumer group, takes batches with ``consume(num_messages=...)``, decodes every value
with orjson, and stops after N messages. It prints one JSON line: the messages read after the first
batch and the seconds they took (start-up and the group join are left out, as in the real run).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import orjson
from confluent_kafka import Consumer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch", type=int, default=10_000)
    ns = parser.parse_args()
    consumer = Consumer(
        {
            "bootstrap.servers": ns.bootstrap,
            "group.id": f"bare-{uuid.uuid4().hex[:8]}",
            "group.protocol": "consumer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(ns.topic.split(","))
    loads = orjson.loads
    read = 0
    first = 0
    started = 0.0
    decoded = 0
    while read < ns.events:
        msgs = consumer.consume(ns.batch, 0.1)
        for msg in msgs:
            if msg.error() is None:
                decoded += len(loads(msg.value())["payload"])
                read += 1
        if msgs and not started:
            started, first = time.perf_counter(), read
    seconds = time.perf_counter() - started
    consumer.close()
    print(json.dumps({"events": read - first, "seconds": seconds, "fields": decoded}), flush=True)


if __name__ == "__main__":
    main()
