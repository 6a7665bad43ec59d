"""Dead letters: a message that cannot be applied goes to ``<topic>.dlq``, byte for byte, with why.

Headers: ``error`` (a machine code: a validation code such as ``invalid_content_id``, or
``handler_failed``), ``error_message`` (a sentence, or the last exception), ``original_topic``,
``original_partition``, ``original_offset``, ``attempts`` and ``consumer_group``. The key and value
are the original ones. ``send`` returns only once Kafka acknowledged every dead letter (idempotent
producer, acks=all), so a batch's offsets are never committed past a message that is neither applied
nor on its dead-letter topic. A crash after the send and before the commit sends it again on replay
(dead letters are at least once).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from daemon.loops import Backoff

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("librdkafka.dlq")


@dataclass(slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    code: str
    message: str
    attempts: int

    @classmethod
    def of(cls, msg: Message, code: str, message: str, attempts: int) -> DeadLetter:
        return cls(
            msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), code, message[:1000], attempts
        )

    def headers(self, group: str) -> list[tuple[str, bytes]]:
        return [
            ("error", self.code.encode()),
            ("error_message", self.message.encode("utf-8", "replace")),
            ("original_topic", self.topic.encode()),
            ("original_partition", str(self.partition).encode()),
            ("original_offset", str(self.offset).encode()),
            ("attempts", str(self.attempts).encode()),
            ("consumer_group", group.encode()),
        ]


def _report(failed: list[DeadLetter], letter: DeadLetter, err: KafkaError | None, _msg: Message) -> None:
    if err is not None:
        log.warning("dead letter for %s.dlq not delivered: %s", letter.topic, err)
        failed.append(letter)


class DeadLetterProducer:
    def __init__(self, bootstrap_servers: str, group: str, retry_max_s: float) -> None:
        self._group = group
        self._retry_max_s = retry_max_s
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": "engagementd-dlq",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "logger": _rdkafka_log,
            }
        )

    async def send(self, letters: list[DeadLetter], stopping: Any = None) -> bool:
        """Produce every letter and wait for Kafka's acknowledgements, retrying failed deliveries with
        backoff. False only when ``stopping()`` turned true before all were delivered."""
        pending = list(letters)
        backoff = Backoff(0.1, self._retry_max_s)
        while pending:
            failed: list[DeadLetter] = []
            report = partial(_report, failed)
            for letter in pending:
                self._produce(letter, report)
            remaining = await asyncio.to_thread(self._producer.flush, 30.0)
            if remaining:  # still queued after 30 s: Kafka unreachable; purge them and start over
                self._producer.purge(in_queue=True, in_flight=True)
                await asyncio.to_thread(self._producer.flush, 5.0)
            pending = failed
            if pending:
                if stopping is not None and stopping():
                    return False
                await asyncio.sleep(backoff.next())  # backoff between delivery rounds
        return True

    def _produce(self, letter: DeadLetter, report: Any) -> None:
        while True:
            try:
                self._producer.produce(
                    f"{letter.topic}.dlq",
                    letter.value,
                    letter.key,
                    headers=letter.headers(self._group),
                    on_delivery=lambda err, msg, letter=letter: report(letter, err, msg),
                )
                return
            except BufferError:  # local queue full: serve delivery reports, then try again
                self._producer.poll(0.1)

    def touch_topics(self, topics: list[str]) -> None:
        """Ask for the topics' metadata, which creates a missing topic where the cluster creates topics
        on demand (the mock cluster, compose's Kafka): a consumer subscribed to a topic that does not
        exist yet would otherwise not see it before its next metadata refresh."""
        for topic in topics:
            try:
                self._producer.list_topics(topic=topic, timeout=10.0)
            except KafkaException as exc:
                log.warning("no metadata for topic %s (%s)", topic, exc)

    def close(self) -> None:
        self._producer.flush(10.0)
