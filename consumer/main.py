"""The consumer process: ``engagementd consume [--once] [--metrics-port P]``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from prometheus_client import start_http_server

from consumer.actions import ActionRunner, PurgeUser
from consumer.batch import BatchProcessor
from consumer.dlq import DeadLetterProducer
from consumer.loop import ConsumeLoop
from consumer.metrics import ConsumerMetrics
from consumer.store import OffsetStore
from daemon import db, keys, logs, purge
from daemon.core import Core
from daemon.kafka_mock import MockCluster
from daemon.metrics import Metrics
from daemon.settings import Settings, ingest_topics
from daemon.store import Store

log = logging.getLogger(__name__)


def purge_for(store: Store, pool: db.LazyPool) -> PurgeUser:
    """The GDPR purge ``user.deleted`` runs (daemon/purge.py). It raises ``PurgeIncomplete`` when a step
    failed: retried without counting a try while only unreachable servers failed it, else like any
    failing handler (consumer/actions.py)."""

    async def purge_user(user_id: str) -> dict:
        return await purge.purge_user(store, await pool(), user_id)

    return purge_user


def topics_for(settings: Settings, purge: PurgeUser | None) -> list[str]:
    topics = [*ingest_topics(settings), settings.consumer_published_topic]
    if purge is not None:
        topics.append(settings.consumer_user_deleted_topic)
    return [t for t in topics if t]


async def run_consumer(
    settings: Settings,
    once: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    purge_user: PurgeUser | None = None,
    ready: asyncio.Event | None = None,
    wait_s: float = 60.0,
) -> int:
    """Consume until SIGTERM (or, with ``once``, until caught up). ``purge_user`` overrides
    ``purge_for`` (tests inject a recorder)."""
    logs.log_start("consume --once" if once else "consume", settings)
    if not settings.kafka_bootstrap:
        log.error("ENGAGEMENT_KAFKA_BOOTSTRAP is not set: nothing to consume")
        return 2
    metrics = Metrics(roles=("consumer",))
    consumer_metrics = ConsumerMetrics(metrics.registry)
    if metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
    mock = MockCluster() if settings.kafka_bootstrap == "mock" else None
    bootstrap = mock.bootstrap_servers if mock is not None else settings.kafka_bootstrap
    core = Core.create(settings, metrics)  # its pool made on first use: views apply while Postgres is down
    store, pool = core.store, core.lazy_pool
    retry_max_s = settings.consumer_retry_max_ms / 1000
    dead_letters = DeadLetterProducer(bootstrap, settings.consumer_group, retry_max_s)
    try:
        await keys.check_shards(core.redis, settings.shards)
        purge = purge_user if purge_user is not None else purge_for(store, pool)
        topics = topics_for(settings, purge)
        if purge is None and settings.consumer_user_deleted_topic:
            log.warning("no GDPR purge wired: %s is not consumed", settings.consumer_user_deleted_topic)

        loop: ConsumeLoop | None = None

        def stopping() -> bool:
            return loop is not None and loop.stopping

        runner = ActionRunner(core, consumer_metrics, purge, stopping)
        offsets = OffsetStore(core.store, settings.consumer_group)
        processor = BatchProcessor(
            settings, store, metrics, consumer_metrics, offsets, runner, dead_letters, stopping
        )
        await asyncio.to_thread(dead_letters.touch_topics, topics)
        loop = ConsumeLoop(settings, bootstrap, topics, processor, consumer_metrics, once, wait_s)
        event_loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            event_loop.add_signal_handler(sig, loop.stop)
        log.info("consuming %s as group %s from %s", ", ".join(topics), settings.consumer_group, bootstrap)
        if ready is not None:
            ready.set()
        await loop.run()
        if loop.left:
            print(
                f"not caught up after {wait_s:g} s: "
                + "; ".join(loop.left[:12])
                + ("; ..." if len(loop.left) > 12 else ""),
                file=sys.stderr,
                flush=True,
            )
            return 3
        print(f"consumed {loop.batches} batches", flush=True)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().remove_signal_handler(sig)
        await asyncio.to_thread(dead_letters.close)
        await core.close()
        if mock is not None:
            mock.close()
