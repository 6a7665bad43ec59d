"""Metrics of the Kafka consumer role (``engagementd consume``), on the process's explicit registry.

Labels: ``topic`` (the few configured topics), ``reason`` (the fixed codes of dead letters and
retries) and, for the lag, ``partition`` (partition numbers: low cardinality, never an id).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon.metrics import FLUSH_BUCKETS


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ("topic",)) -> Counter:
            return Counter(f"engagement_consumer_{name}", doc, labels, registry=registry)

        self.consumed = counter("events", "Kafka messages taken by the consumer, duplicates included.")
        self.applied = counter("applied", "Messages applied (counted in Redis, or their action done).")
        self.duplicates = counter(
            "duplicates", "Messages skipped because the idempotency store had seen their offset."
        )
        self.dead_letters = counter(
            "dead_letters",
            "Messages sent to <topic>.dlq, by reason (a validation code, or handler_failed).",
            ("topic", "reason"),
        )
        self.retries = counter(
            "retries",
            "Retries: handler_failed (a try of one message, at most the configured tries) and "
            "unavailable (Redis, Postgres or Kafka unreachable: the batch waits, no try is counted).",
            ("reason",),
        )
        self.commit_errors = counter(
            "commit_errors", "Offset commits Kafka refused (the idempotency store skips the replay).", ()
        )
        self.batch_seconds = Histogram(
            "engagement_consumer_batch_duration_seconds",
            "Time to apply one batch: from taking it to committing its offsets.",
            buckets=FLUSH_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            "engagement_consumer_lag_messages",
            "Messages in an assigned partition after the consumer's position (high watermark - position).",
            ("topic", "partition"),
            registry=registry,
        )
        for reason in ("handler_failed", "unavailable"):
            self.retries.labels(reason)
