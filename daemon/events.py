"""Engagement events to Kafka (docs/design.md, decision 6; seed 003).

``EventProducer.emit`` never blocks and never raises: it hands the enveloped event to confluent-kafka's
idempotent producer; when librdkafka's bounded local queue is full the event waits in a bounded retry
deque that a background task re-produces; failed deliveries are retried a bounded number of times.
Every event ends up counted exactly once as delivered or dropped (with a reason, and logged), or is
still pending (in librdkafka or in the retry deque, both exported as gauges).

All state is touched on the event-loop thread only: ``emit`` is called from coroutines, and delivery
callbacks run inside ``poll(0)``, which the background task and ``close`` call on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon.kafka_mock import MockCluster
from daemon.loops import Every
from daemon.metrics import Metrics
from daemon.settings import Settings

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("librdkafka")

SOURCE_SERVICE = "engagement-service"
USER_ENGAGEMENT_EVENTS = "user.engagement.events"  # keyed on user_id
SUBSCRIPTION_CHANGED = "engagement.subscription.changed"  # keyed on creator_id
# engagement_events_dropped_total's reasons
DROP_REASONS = (
    "closed",
    "unserializable",
    "error",
    "refused",
    "retry_queue_full",
    "attempts_exhausted",
    "shutdown",
)
MEDIA_STARTED = "media_started"
MEDIA_COMPLETED = "media_completed"
MEDIA_SKIPPED = "media_skipped"
MEDIA_REPLAY = "media_replay"
MEDIA_LIKED = "media_liked"
MEDIA_DISLIKED = "media_disliked"
MEDIA_SHARED = "media_shared"
MEDIA_ADDED_TO_PLAYLIST = "media_added_to_playlist"
EVENT_TYPES = frozenset(
    (MEDIA_STARTED, MEDIA_COMPLETED, MEDIA_SKIPPED, MEDIA_REPLAY)
    + (MEDIA_LIKED, MEDIA_DISLIKED, MEDIA_SHARED, MEDIA_ADDED_TO_PLAYLIST)
)
SUBSCRIBED, UNSUBSCRIBED = "SUBSCRIBED", "UNSUBSCRIBED"

_ts_cache: tuple[int, str] = (-1, "")


def utc_timestamp(now: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds and 'Z', e.g. ``2026-11-02T10:15:30.123Z``."""
    global _ts_cache
    now = time.time() if now is None else now
    sec = int(now)
    if _ts_cache[0] != sec:
        _ts_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_ts_cache[1]}.{int((now - sec) * 1000):03d}Z"


_UUID4_CLEAR, _UUID4_SET = ~((0xF000 << 64) | (0xC000 << 48)), (0x4000 << 64) | (0x8000 << 48)


def uuid4_str() -> str:
    """A random (version 4, RFC 4122 variant) UUID string; twice as fast as ``str(uuid.uuid4())``."""
    h = f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def envelope(payload: dict[str, Any], source_service: str = SOURCE_SERVICE) -> dict[str, Any]:
    return {
        "event_id": uuid4_str(),
        "timestamp": utc_timestamp(),
        "source_service": source_service,
        "payload": payload,
    }


def serialize(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


@dataclass
class EventStats:
    produced: int = 0  # events accepted by emit() while enabled
    delivered: int = 0
    delivery_failures: int = 0  # failed delivery reports (each attempt)
    queue_full: int = 0  # produce() refused with BufferError
    dropped: int = 0


class _EventMetrics:
    """The producer's metrics on one registry (shared by producers on the same Metrics object)."""

    def __init__(self, r: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ("topic",)) -> Counter:
            return Counter(f"engagement_events_{name}", doc, labels, registry=r)

        self.produced = counter("produced", "Events handed to the Kafka producer by emit().")
        self.delivered = counter("delivered", "Events acknowledged by Kafka.")
        self.failures = counter("delivery_failures", "Failed delivery reports (each attempt; retried).")
        self.queue_full = counter("queue_full", "Events refused by the full local queue, sent to retry.")
        self.dropped = counter(
            "dropped",
            "Events given up on (retry queue full, attempts exhausted, unserializable, shutdown).",
            ("topic", "reason"),
        )
        self.retry_depth = Gauge(
            "engagement_events_retry_queue", "Events waiting in the in-memory retry queue.", registry=r
        )
        self.in_flight = Gauge(
            "engagement_events_in_flight", "Events in the producer awaiting a delivery report.", registry=r
        )
        for topic in (USER_ENGAGEMENT_EVENTS, SUBSCRIPTION_CHANGED):  # the series exist at zero
            for family in (self.produced, self.delivered, self.failures, self.queue_full):
                family.labels(topic)
            for reason in DROP_REASONS:
                self.dropped.labels(topic, reason)


_registered: weakref.WeakKeyDictionary[CollectorRegistry, _EventMetrics] = weakref.WeakKeyDictionary()


def _event_metrics(metrics: Metrics) -> _EventMetrics:
    found = _registered.get(metrics.registry)
    if found is None:
        found = _registered[metrics.registry] = _EventMetrics(metrics.registry)
    return found


_Retry = tuple[str, bytes, bytes, int]  # topic, key, value, delivery attempts already failed


class EventProducer:
    """Kafka producer of engagement events. Disabled (``emit`` is a no-op) when ``kafka_bootstrap`` is
    empty; ``"mock"`` starts librdkafka's mock cluster; anything else is a bootstrap server list."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        config: dict[str, Any] | None = None,
        retry_max_events: int | None = None,
    ) -> None:
        self.settings = settings
        self.stats = EventStats()
        self.enabled = bool(settings.kafka_bootstrap)
        self._mock: MockCluster | None = None
        self._producer: Producer | None = None
        self._m: _EventMetrics | None = None
        self._retry: deque[_Retry] = deque()
        self._retry_max = retry_max_events or settings.kafka_retry_max_events
        self._attempts = settings.kafka_delivery_attempts
        self._poll_interval_s = settings.kafka_poll_interval_ms / 1000
        self._outstanding: dict[str, int] = {}  # per topic: in librdkafka, delivery report not yet served
        self._closing = False
        self._final = False
        self._poller = Every("event-producer", self._poll_interval_s, self._poll)
        self._drops_unlogged: dict[str, int] = {}
        self._drop_logged_at = 0.0
        # topic -> bound counter child: labels() costs ~2 us, a cached child's inc() ~0.3 us
        self._produced: dict[str, Any] = {}
        self._delivered: dict[str, Any] = {}
        # Registered also when disabled: the dashboard's event panels show zeros, not "no data".
        self._m = _event_metrics(metrics)
        if not self.enabled:
            self.bootstrap_servers = ""
            return
        if settings.kafka_bootstrap == "mock":
            self._mock = MockCluster()
            self.bootstrap_servers = self._mock.bootstrap_servers
        else:
            self.bootstrap_servers = settings.kafka_bootstrap
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": "engagementd",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": settings.kafka_linger_ms,
            "compression.type": "lz4",
            "queue.buffering.max.messages": settings.kafka_queue_max_messages,
            "message.timeout.ms": settings.kafka_message_timeout_ms,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "logger": _rdkafka_log,
            **(config or {}),
        }
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:  # librdkafka built without lz4
            log.warning("lz4 unavailable (%s); producing uncompressed", exc)
            self._producer = Producer({**conf, "compression.type": "none"})

    async def start(self) -> None:
        if not self.enabled:
            log.warning("ENGAGEMENT_KAFKA_BOOTSTRAP is not set: engagement events are disabled")
            return
        log.info("producing engagement events to %s", self.bootstrap_servers)
        self._poller.start()

    def emit(self, topic: str, key: str, payload: dict[str, Any]) -> None:
        """Envelope ``payload`` and queue it for ``topic`` keyed on ``key``. Never blocks or raises."""
        if not self.enabled:
            return
        m = self._m
        assert m is not None
        self.stats.produced += 1
        counter = self._produced.get(topic)
        if counter is None:
            counter = self._produced[topic] = m.produced.labels(topic)
        counter.inc()
        if self._closing:
            self._drop(topic, "closed")
            return
        try:
            item: _Retry = (topic, key.encode(), serialize(envelope(payload)), 0)
        except Exception as exc:
            log.error("event for %s not serializable: %r", topic, exc)
            self._drop(topic, "unserializable")
            return
        try:
            if self._retry:  # keep FIFO order behind events already waiting
                self._defer(item)
            elif not self._produce(item):
                assert self._producer is not None
                self._producer.poll(0)  # serve delivery reports; may free queue space
                if not self._produce(item):
                    self.stats.queue_full += 1
                    m.queue_full.labels(topic).inc()
                    self._defer(item)
        except Exception:  # never into the caller
            log.exception("emitting an event for %s failed", topic)
            self._drop(topic, "error")

    def _produce(self, item: _Retry) -> bool:
        """Hand one event to librdkafka; False when its local queue is full."""
        topic, key, value, attempts = item
        assert self._producer is not None
        try:
            if attempts:
                cb = partial(self._on_delivery_attempt, attempts)
                self._producer.produce(topic, value, key, on_delivery=cb)
            else:
                self._producer.produce(topic, value, key)
        except BufferError:
            return False
        except (KafkaException, TypeError, ValueError) as exc:  # e.g. too large: retrying cannot help
            log.error("event for %s refused by the producer: %s", topic, exc)
            self._drop(topic, "refused")
            return True
        self._outstanding[topic] = self._outstanding.get(topic, 0) + 1
        return True

    def _defer(self, item: _Retry) -> None:
        if len(self._retry) >= self._retry_max:
            self._drop(item[0], "retry_queue_full")
        else:
            self._retry.append(item)

    def _drop(self, topic: str, reason: str, n: int = 1) -> None:
        if n <= 0:
            return
        self.stats.dropped += n
        assert self._m is not None
        self._m.dropped.labels(topic, reason).inc(n)
        key = f"{topic}/{reason}"
        self._drops_unlogged[key] = self._drops_unlogged.get(key, 0) + n
        self._log_drops(force=False)

    def _log_drops(self, force: bool) -> None:
        """Drops are logged at most once a second, aggregated, and always before close returns."""
        now = time.monotonic()
        if self._drops_unlogged and (force or now - self._drop_logged_at >= 1.0):
            self._drop_logged_at = now
            log.error("engagement events dropped (topic/reason: count): %s", self._drops_unlogged)
            self._drops_unlogged = {}

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self._on_delivery_attempt(0, err, msg)

    def _on_delivery_attempt(self, attempts: int, err: KafkaError | None, msg: Message) -> None:
        if self._final:  # already counted as dropped at shutdown
            return
        topic = msg.topic() or ""
        self._outstanding[topic] = self._outstanding.get(topic, 0) - 1
        assert self._m is not None
        if err is None:
            self.stats.delivered += 1
            counter = self._delivered.get(topic)
            if counter is None:
                counter = self._delivered[topic] = self._m.delivered.labels(topic)
            counter.inc()
            return
        self.stats.delivery_failures += 1
        self._m.failures.labels(topic).inc()
        if attempts + 1 >= self._attempts:
            log.warning("event for %s undeliverable after %d attempts: %s", topic, attempts + 1, err)
            self._drop(topic, "attempts_exhausted")
        else:
            self._defer((topic, msg.key() or b"", msg.value() or b"", attempts + 1))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.critical("kafka producer fatal error, events will fail until restart: %s", err)
        elif err.code() == KafkaError._TRANSPORT:  # librdkafka's own log already says so
            log.debug("kafka producer error: %s", err)
        else:
            log.warning("kafka producer error: %s", err)

    def _pump(self) -> None:
        """Serve delivery reports, re-produce what waits in the retry deque, update the gauges."""
        assert self._producer is not None and self._m is not None
        self._producer.poll(0)
        retry = self._retry
        while retry and self._produce(retry[0]):
            retry.popleft()
        self._m.retry_depth.set(len(retry))
        self._m.in_flight.set(sum(self._outstanding.values()))

    async def _poll(self) -> None:
        try:
            self._pump()
        except Exception:
            log.exception("event producer background pass failed")

    @property
    def pending(self) -> int:
        """Events not yet delivered nor dropped: in librdkafka plus in the retry deque."""
        return sum(self._outstanding.values()) + len(self._retry)

    async def close(self, timeout_s: float | None = None) -> int:
        """Deliver what is pending until the deadline; count the rest as dropped and return its number."""
        if not self.enabled or self._final:
            return 0
        if timeout_s is None:
            timeout_s = self.settings.kafka_flush_timeout_s
        self._closing = True
        await self._poller.cancel()
        deadline = time.monotonic() + timeout_s
        while True:  # poll on the loop (poll(0) never blocks) so callbacks stay on this thread
            self._pump()
            if not self.pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        undelivered = self.pending
        self._final = True
        assert self._producer is not None and self._m is not None
        self._producer.purge(in_queue=True, in_flight=True, blocking=False)
        self._producer.poll(0)
        left = self._outstanding
        for topic, *_ in self._retry:
            left[topic] = left.get(topic, 0) + 1
        for topic, n in left.items():
            self._drop(topic, "shutdown", n)
        self._log_drops(force=True)
        self._retry.clear()
        left.clear()
        self._m.retry_depth.set(0)
        self._m.in_flight.set(0)
        self._producer = None
        if self._mock is not None:
            self._mock.close()
        return undelivered
