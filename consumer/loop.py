"""The consume loop: take a batch, apply it (consumer/batch.py), commit its offsets, repeat.

``consume(num_messages=...)`` runs in a worker thread so the event loop stays free; offsets are
committed synchronously, per partition, only after the batch is applied and marked in Redis. Batches
overlap: while Redis applies batch k's view drains and its offsets are committed, batch k+1 is taken,
validated and journaled, and its drains are sent at once, so Redis never waits for k's commit; at most
``MAX_IN_FLIGHT`` batches are applied or finished at a time. Batches are finished (offsets marked in
Redis) and committed in batch order. On SIGTERM
the loop finishes the batch in hand, commits it and closes the consumer (leaving the group). With
``once`` it stops as soon as every assigned partition is consumed to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from consumer.actions import Abandoned
from consumer.batch import BatchProcessor, Prepared
from consumer.metrics import ConsumerMetrics
from daemon.loops import Loop
from daemon.settings import Settings

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("librdkafka.consumer")
LAG_INTERVAL_S = 1.0
# Batches applied or finished at once: Redis applies a batch's drains as soon as it is journaled, while
# the batch ahead of it is still being applied, finished and committed.
MAX_IN_FLIGHT = 2


def consumer_config(settings: Settings, bootstrap_servers: str) -> dict[str, Any]:
    config = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": settings.consumer_group,
        "group.protocol": settings.consumer_group_protocol,
        "client.id": "engagementd-consumer",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "logger": _rdkafka_log,
    }
    if settings.consumer_group_protocol == "classic":  # KIP-848's session timeout is the broker's
        config["session.timeout.ms"] = settings.consumer_session_timeout_ms
    return config


class ConsumeLoop(Loop):
    """Poll, prepare and complete batches until stopped (``stop()``: finish the batches in hand, commit,
    leave the group: SIGTERM), or with ``once`` until caught up."""

    name = "consume"

    def __init__(
        self,
        settings: Settings,
        bootstrap_servers: str,
        topics: list[str],
        processor: BatchProcessor,
        metrics: ConsumerMetrics,
        once: bool = False,
        wait_s: float = 60.0,
    ) -> None:
        super().__init__()
        self._once = once
        self._wait_s = wait_s
        self.left: list[str] = []  # with once: what was not consumed when wait_s ran out
        self._settings = settings
        self._topics = topics
        self._processor = processor
        self._m = metrics
        self._consumer = Consumer(consumer_config(settings, bootstrap_servers))
        self._lag_at = 0.0
        self._lag_labels: set[tuple[str, str]] = set()
        self.batches = 0

    async def run(self) -> None:
        once = self._once
        consumer = self._consumer
        consumer.subscribe(self._topics)
        size = self._settings.consumer_batch_max_messages
        timeout_s = self._settings.consumer_batch_timeout_ms / 1000
        in_flight: deque[asyncio.Task[None]] = deque()  # batches being applied or finished, in order
        deadline = time.monotonic() + self._wait_s
        try:
            while not self.stopping:
                msgs = await asyncio.to_thread(consumer.consume, size, timeout_s)
                good = [m for m in msgs if m.error() is None] if msgs else msgs
                if len(good) != len(msgs):
                    self._log_errors(msgs)
                if good:
                    started = time.perf_counter()
                    prepared = await self._processor.prepare(good)
                    while len(in_flight) >= MAX_IN_FLIGHT:
                        await in_flight.popleft()  # raises what it raised
                    ahead = in_flight[-1] if in_flight else None
                    in_flight.append(asyncio.create_task(self._complete(prepared, started, ahead)))
                while in_flight and in_flight[0].done():
                    await in_flight.popleft()  # raises what it raised
                now = time.monotonic()
                if now >= self._lag_at:
                    self._lag_at = now + LAG_INTERVAL_S
                    await asyncio.to_thread(self._update_lag)
                if once and not good and not in_flight:
                    left = await asyncio.to_thread(self._behind)
                    if not left:
                        break
                    if time.monotonic() >= deadline:
                        self.left = left
                        break
        except Abandoned:
            log.warning("shutdown while a dependency is unreachable: batch left uncommitted")
        finally:
            try:
                while in_flight:  # the batches in hand: applied and committed before leaving
                    with contextlib.suppress(Abandoned):
                        await in_flight.popleft()
            finally:
                await asyncio.to_thread(consumer.close)  # leaves the group: its partitions move at once
                log.info("consumer closed after %d batches", self.batches)

    async def _complete(self, prepared: Prepared, started: float, ahead: asyncio.Task[None] | None) -> None:
        """Apply one prepared batch at once; once the batch ahead is committed, finish this one and
        commit its offsets."""
        await prepared.apply()
        if ahead is not None:
            await ahead  # raises what it raised: then this batch is left to recovery, uncommitted
        commits = await prepared.finish()
        await asyncio.to_thread(self._commit, commits)
        self._m.batch_seconds.observe(time.perf_counter() - started)
        self.batches += 1

    def _commit(self, commits: dict[tuple[str, int], int]) -> None:
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in commits.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # e.g. the partitions moved to another member meanwhile: the offsets are marked applied in
            # Redis, so whoever replays them skips them as duplicates.
            self._m.commit_errors.inc()
            log.warning("offset commit failed (%s); the idempotency store covers the replay", exc)

    def _log_errors(self, msgs: list[Any]) -> None:
        for msg in msgs:
            err = msg.error()
            if err is None or err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                log.info("topic %s does not exist yet: %s", msg.topic(), err.str())
            else:
                log.warning("consumer error: %s", err.str())

    def _update_lag(self) -> None:
        consumer = self._consumer
        try:
            positions = consumer.position(consumer.assignment())
        except KafkaException:
            return
        labels = set()
        for tp in positions:
            if tp.offset < 0:
                continue
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                continue
            label = (tp.topic, str(tp.partition))
            labels.add(label)
            self._m.lag.labels(*label).set(max(high - tp.offset, 0))
        for label in self._lag_labels - labels:  # partitions revoked: their series go away
            self._m.lag.remove(*label)
        self._lag_labels = labels

    def _behind(self) -> list[str]:
        """What keeps ``--once`` from being caught up: partitions of the topics this consumer is not
        assigned (another member holds them: a dead one until its session times out), and assigned
        partitions not consumed to their end. Empty: caught up."""
        consumer = self._consumer
        assignment = consumer.assignment()
        try:
            topics = consumer.list_topics(timeout=10.0).topics
            assigned = {(tp.topic, tp.partition) for tp in assignment}
            left = [
                f"{topic}[{partition}]: assigned to another member of group {self._settings.consumer_group}"
                for topic in self._topics
                if topic in topics
                for partition in sorted(topics[topic].partitions)
                if (topic, partition) not in assigned
            ]
            if not assignment:
                return left or ["no partition assigned yet"]
            positions = consumer.position(assignment)
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(assignment, 10.0)}
            for tp in positions:
                low, high = consumer.get_watermark_offsets(tp, timeout=10.0)
                offset = tp.offset
                if offset == OFFSET_INVALID or offset < 0:
                    offset = committed.get((tp.topic, tp.partition), OFFSET_INVALID)
                if offset < 0:
                    offset = low
                if offset < high:
                    left.append(f"{tp.topic}[{tp.partition}]: {high - offset} messages not consumed")
        except KafkaException as exc:
            return [f"could not read the partitions' ends ({exc})"]
        return left
