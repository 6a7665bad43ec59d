"""librdkafka's in-process mock Kafka cluster, for tests and ``dev`` mode.

A client configured with ``test.mock.num.brokers`` starts a mock cluster that speaks the real Kafka
protocol on loopback ports and lives as long as that client. ``MockCluster`` keeps such a client (a
"holder" that never produces) and exposes the brokers' addresses, so any number of ordinary producers
and consumers (consumer groups included) can use it. The mock cluster auto-creates topics on first use,
with 4 partitions each (librdkafka's mock default); it does not support CreateTopics.
"""

from __future__ import annotations

import logging

from confluent_kafka import Producer

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("librdkafka.mock")


class MockCluster:
    """A running mock cluster; ``bootstrap_servers`` is a normal ``host:port,...`` list."""

    def __init__(self, num_brokers: int = 3, timeout_s: float = 10.0) -> None:
        self._holder: Producer | None = Producer(
            {"test.mock.num.brokers": num_brokers, "logger": _rdkafka_log, "client.id": "mock-holder"}
        )
        brokers = self._holder.list_topics(timeout=timeout_s).brokers
        self.bootstrap_servers: str = ",".join(
            f"{b.host}:{b.port}" for _, b in sorted(brokers.items(), key=lambda kv: kv[0])
        )
        log.info("kafka mock cluster with %d brokers at %s", num_brokers, self.bootstrap_servers)

    @property
    def running(self) -> bool:
        return self._holder is not None

    def close(self) -> None:
        """Stop the cluster (its brokers go away with the holder client)."""
        if self._holder is not None:
            self._holder.poll(0)  # serve the holder's queued log lines
            self._holder = None

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["MockCluster"]
