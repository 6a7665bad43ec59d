"""The flusher process: ``engagementd flusher [--once] [--metrics-port P]``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from prometheus_client import start_http_server

from daemon import db, keys, logs
from daemon.loops import Every
from daemon.metrics import Metrics
from daemon.redis_client import make_redis
from daemon.redis_memory import RedisMemory
from daemon.settings import Settings
from daemon.store.rows import RowFilter, RowFilterKeeper
from flusher.flusher import Flusher
from lua import Scripts

log = logging.getLogger(__name__)


async def run_flusher(
    settings: Settings,
    once: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    wait_s: float = 60.0,
) -> int:
    logs.log_start("flusher --once" if once else "flusher", settings)
    metrics = Metrics(roles=("flusher",))
    if metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
    redis = make_redis(settings)
    pool = await db.create_pool(settings)
    flusher = Flusher(settings, redis, pool, Scripts.load(), metrics)
    try:
        await keys.check_shards(redis, settings.shards)
        if once:
            batches, rows = await flusher.drain(wait_s)
            print(f"flushed {batches} batches, {rows} rows", flush=True)
            if flusher.leased_elsewhere:
                shards = flusher.leased_elsewhere
                print(
                    f"{len(shards)} shards still leased by another flusher after {wait_s:g} s (shards"
                    f" {', '.join(map(str, shards[:10]))}{', ...' if len(shards) > 10 else ''}): their"
                    " pending changes were not flushed here; run it again, or with a longer --wait-s",
                    file=sys.stderr,
                    flush=True,
                )
                return 3
            return 0
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, flusher.stop)
        log.info(
            "flusher %s running every %d ms over %d shards, reconciling every %s",
            flusher.owner,
            settings.flush_interval_ms,
            settings.shards,
            f"{settings.reconcile_interval_s:g} s" if settings.reconcile_interval_s > 0 else "never",
        )
        # Their own tasks: a slow INFO, SCAN or row filter build never delays a flush.
        keeper = RowFilterKeeper(RowFilter(settings, redis, flusher.scripts), pool, metrics)
        helpers = [Every("row-filter", settings.row_filter_check_s, keeper.step)]
        if settings.redis_memory_sample_s > 0:
            memory = RedisMemory(redis, metrics.redis_memory)
            helpers.append(Every("redis-memory", settings.redis_memory_sample_s, memory.sample))
        for helper in helpers:
            helper.start()
        try:
            await flusher.run()
        finally:
            for helper in helpers:
                await helper.cancel()
        await flusher.release_leases()
        return 0
    finally:
        await redis.aclose()
        await pool.close()
