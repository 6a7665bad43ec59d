"""``engagementd``: one CLI for every role of the Engagement Service."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Coroutine
from typing import Any

import uvloop

from daemon import logs
from daemon.keys import LayoutError
from daemon.settings import Settings, SettingsError

log = logging.getLogger("engagementd")


def _run(main: Coroutine[Any, Any, Any]) -> Any:
    """Every role's event loop is uvloop's (the api's too: granian runs it on uvloop)."""
    return uvloop.run(main)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from daemon import db

    applied = _run(db.migrate(settings))
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    print(f"schema up to date ({len(applied)} applied)")
    return _run(_upgrade_redis(settings))


async def _upgrade_redis(settings: Settings) -> int:
    """The Redis key layout, upgraded when it is an older one (daemon/store/upgrade.py); the function
    libraries of other versions of the code deleted."""
    from redis.exceptions import RedisError

    from daemon.redis_client import make_redis
    from daemon.store.upgrade import upgrade
    from lua import Scripts

    redis = make_redis(settings)
    try:
        try:
            moved = await upgrade(redis, settings.shards, settings.counts_idle_ttl_s)
            if moved:
                print("Redis key layout upgraded: " + ", ".join(f"{n} {w}" for w, n in moved.items()))
            built = await _row_filters(settings, redis, rebuild=False)
        except (RedisError, OSError) as exc:
            print(f"Redis key layout not checked: Redis unavailable ({exc}); run migrate again to check it")
            return 0
        if built:
            print(f"row filters built for {built} shards")
        try:
            pruned = await Scripts.load().set_reaction.library.prune(redis)  # type: ignore[union-attr]
        except (RedisError, OSError) as exc:  # an ACL without FUNCTION DELETE, say: they stay, as before
            print(f"function libraries of other versions not deleted: {exc}")
        else:
            if pruned:
                print("function libraries of other versions deleted: " + ", ".join(sorted(set(pruned))))
    finally:
        await redis.aclose()
    return 0


async def _row_filters(settings: Settings, redis: Any, rebuild: bool) -> int:
    """Build the row filters that are stale (all of them with ``rebuild``): daemon/store/rows.py."""
    from daemon import db
    from daemon.store.rows import RowFilter
    from lua import Scripts

    rows = RowFilter(settings, redis, Scripts.load())
    pool = await db.create_pool(settings)
    try:
        return await rows.build(pool) if rebuild else await rows.ensure(pool)
    finally:
        await pool.close()


def cmd_row_filter(settings: Settings, args: argparse.Namespace) -> int:
    return _run(_row_filter_status(settings, args.rebuild))


async def _row_filter_status(settings: Settings, rebuild: bool) -> int:
    from daemon.redis_client import make_redis
    from daemon.store.rows import RowFilter
    from lua import Scripts

    redis = make_redis(settings)
    try:
        if rebuild:
            print(f"built {await _row_filters(settings, redis, rebuild=True)} shards")
        status = await RowFilter(settings, redis, Scripts.load()).status()
    finally:
        await redis.aclose()
    complete = sum(f.complete for f in status)
    sizes = sorted({f.log2 for f in status})
    fill = max((f.fill for f in status), default=0.0)
    print(
        f"row filters: {complete} of {len(status)} shards complete; size 2^{sizes} bits per shard"
        f" (configured 2^{settings.row_filter_log2}); fullest {fill:.1%} set,"
        f" so about {fill**5:.3%} of new keys are read from Postgres needlessly"
    )
    return 0 if complete == len(status) or settings.row_filter_log2 == 0 else 1


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.proc.server import serve_api

    serve_api(args.host, args.port, args.workers, settings)
    return 0


def cmd_flusher(settings: Settings, args: argparse.Namespace) -> int:
    from flusher.main import run_flusher

    return _run(
        run_flusher(
            settings,
            once=args.once,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            wait_s=args.wait_s,
        )
    )


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.main import run_consumer

    return _run(
        run_consumer(
            settings,
            once=args.once,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            wait_s=args.wait_s,
        )
    )


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.reconcile import run_reconcile

    return _run(run_reconcile(settings))


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.topics import run_topics

    return run_topics(settings, args.bootstrap or settings.kafka_bootstrap, args.check, args.timeout_s)


def cmd_events(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.tail import run_tail

    return run_tail(args.bootstrap or settings.kafka_bootstrap, args.topic, args.from_beginning, args.max)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.proc.dev import run_dev

    return run_dev(settings, host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engagementd", description="Engagement Service")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "migrate", help="create or upgrade the Postgres schema and the Redis key layout (idempotent)"
    ).set_defaults(func=cmd_migrate)

    api = sub.add_parser("api", help="serve the HTTP API (and /metrics on the same port)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(func=cmd_api)

    flusher = sub.add_parser("flusher", help="drain Redis deltas to Postgres")
    flusher.add_argument(
        "--once",
        action="store_true",
        help="drain everything pending, then exit: 0, or 3 when shards another flusher holds were left",
    )
    flusher.add_argument(
        "--wait-s",
        type=float,
        default=60.0,
        help="with --once: how long to wait for shards another flusher's lease holds (a killed flusher's"
        " expires after ENGAGEMENT_FLUSH_LEASE_MS)",
    )
    flusher.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on this port")
    flusher.add_argument("--metrics-host", default="0.0.0.0", help="address of the metrics server")
    flusher.set_defaults(func=cmd_flusher)

    consume = sub.add_parser("consume", help="apply Kafka events (views, likes, registry, purges) to Redis")
    consume.add_argument(
        "--once",
        action="store_true",
        help="exit 0 once every partition of its topics is assigned to it and consumed to its end; 3 when"
        " --wait-s ran out first (a dead member still holding partitions, say)",
    )
    consume.add_argument(
        "--wait-s", type=float, default=60.0, help="with --once: how long to wait to be caught up"
    )
    consume.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on this port")
    consume.add_argument("--metrics-host", default="0.0.0.0", help="address of the metrics server")
    consume.set_defaults(func=cmd_consume)

    sub.add_parser(
        "reconcile", help="repair the counts and states Redis holds from Postgres plus pending deltas"
    ).set_defaults(func=cmd_reconcile)

    row_filter = sub.add_parser(
        "row-filter", help="show the row filters (which missing keys are new to Postgres); --rebuild them"
    )
    row_filter.add_argument(
        "--rebuild", action="store_true", help="build every shard's filter again from Redis and Postgres"
    )
    row_filter.set_defaults(func=cmd_row_filter)
    topics = sub.add_parser(
        "topics", help="create the Kafka topics this service owns and check them all against seed 003"
    )
    topics.add_argument("--check", action="store_true", help="only check: create nothing")
    topics.add_argument("--bootstrap", default="", help="Kafka servers (default ENGAGEMENT_KAFKA_BOOTSTRAP)")
    topics.add_argument("--timeout-s", type=float, default=10.0, help="per admin request")
    topics.set_defaults(func=cmd_topics)

    events = sub.add_parser("events", help="watch the engagement events the service publishes")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    tail = events_sub.add_parser("tail", help="print each event as one JSON line (Ctrl-C stops)")
    tail.add_argument("--bootstrap", default="", help="Kafka servers (default ENGAGEMENT_KAFKA_BOOTSTRAP)")
    tail.add_argument(
        "--topic",
        action="append",
        default=None,
        help="a topic to follow (repeatable; default: user.engagement.events and"
        " engagement.subscription.changed)",
    )
    tail.add_argument(
        "--from-beginning", action="store_true", help="from the oldest event kept, not only new ones"
    )
    tail.add_argument("--max", type=int, default=0, help="exit after this many events (0: never)")
    tail.set_defaults(func=cmd_events)

    dev = sub.add_parser("dev", help="private Redis and Postgres, migrate, api and flusher in one command")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"engagementd: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings)
    try:
        return int(args.func(settings, args) or 0)
    except KeyboardInterrupt:
        return 130
    except LayoutError as exc:
        print(f"engagementd: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
