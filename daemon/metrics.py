"""Prometheus metrics on an explicit registry, ``engagement_`` prefix.

Request counting is on the hottest path, so it is kept in plain dicts and turned into metric families
only when /metrics is scraped (``RequestMetrics`` is a custom collector). Everything off the hot path
uses prometheus_client's own metric types.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.keys import COLD_KINDS as COLD_KEY_KINDS
from daemon.redis_memory import RedisMemoryMetrics

# The values of the ``method`` label: a request with any other method counts as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
COLD_KINDS = tuple(dict.fromkeys(COLD_KEY_KINDS.values()))
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics(Collector):
    """engagement_http_requests_total{route,method,status} and
    engagement_http_request_duration_seconds{route}, recorded with a dict update and a bisect."""

    def __init__(self, buckets: tuple[float, ...] = REQUEST_BUCKETS) -> None:
        self._buckets = buckets
        self._counts: dict[tuple[str, str, int], int] = {}
        # route -> [per-bucket counts..., +Inf count, sum]
        self._durations: dict[str, list[float]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in HTTP_METHODS:  # a client's made-up method must not add a series
            method = "other"
        key = (route, method, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        hist = self._durations.get(route)
        if hist is None:
            hist = self._durations[route] = [0] * (len(self._buckets) + 1) + [0.0]
        hist[bisect_left(self._buckets, seconds)] += 1
        hist[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "engagement_http_requests",
            "HTTP requests by route, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), n in list(self._counts.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        durations = HistogramMetricFamily(
            "engagement_http_request_duration_seconds", "HTTP request duration by route.", labels=["route"]
        )
        for route, hist in list(self._durations.items()):
            cumulative, running = [], 0
            for bound, n in zip((*map(_fmt, self._buckets), "+Inf"), hist[:-1], strict=True):
                running += n
                cumulative.append((bound, running))
            durations.add_metric([route], cumulative, sum_value=hist[-1])
        yield durations


def _fmt(bound: float) -> str:
    return repr(float(bound))


class BufferStats(Protocol):
    accepted: int
    refused: int

    @property
    def viewers_dropped(self) -> int: ...

    def depth(self) -> int: ...


class _BufferCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        buffer = self._metrics._buffer
        if buffer is None:
            return
        depth = GaugeMetricFamily(
            "engagement_buffer_items", "Distinct items waiting in the view buffer, queued and in flight."
        )
        depth.add_metric([], buffer.depth())
        yield depth
        yield CounterMetricFamily(
            "engagement_views_accepted", "View events accepted into the local buffer.", value=buffer.accepted
        )
        yield CounterMetricFamily(
            "engagement_views_refused",
            "View events refused with 503 because the buffer was full or shutting down.",
            value=buffer.refused,
        )
        yield CounterMetricFamily(
            "engagement_unique_viewers_dropped",
            "User ids of views left out of the unique viewers HLLs: their item was at"
            " ENGAGEMENT_BUFFER_VIEWERS_MAX_PER_ITEM in one drain (the views were counted).",
            value=buffer.viewers_dropped,
        )


class Metrics:
    """Every metric of one process. A process exports only its roles' metrics (the others still
    exist as attributes, unregistered, so shared code can update them); names are stable."""

    def __init__(self, roles: tuple[str, ...] = ("api", "flusher")) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        api = self.registry if "api" in roles else None
        flusher = self.registry if "flusher" in roles else None
        self.requests = RequestMetrics()
        # Local aggregation buffer (api processes): read from the buffer at scrape time.
        self._buffer: BufferStats | None = None
        if api is not None:
            api.register(self.requests)
            api.register(_BufferCollector(self))
        r = api
        self.redis_flush_seconds = Histogram(
            "engagement_redis_flush_duration_seconds",
            "Time to apply one buffer drain to Redis.",
            buckets=FLUSH_BUCKETS,
            registry=r,
        )
        self.redis_flush_errors = Counter(
            "engagement_redis_flush_errors",
            "Buffer drains to Redis that failed and will be retried.",
            registry=r,
        )
        self.rate_limited = Counter(
            "engagement_rate_limited",
            "Requests refused with 429 by the per-user rate limits.",
            ["action"],
            registry=r,
        )
        self.rate_limit_errors = Counter(
            "engagement_rate_limit_errors",
            "Rate-limit checks that failed on a Redis error; the request was let through (fail open).",
            ["action"],
            registry=r,
        )
        self.redis_flushed_views = Counter(
            "engagement_redis_flushed_views", "View events applied to Redis by buffer drains.", registry=r
        )
        self.fallback_writes = Counter(
            "engagement_fallback_writes",
            "Writes made in Postgres alone because Redis was unreachable (like, subscription, comment,"
            " history).",
            ["kind"],
            registry=r,
        )
        for kind in ("like", "subscription", "history"):
            self.fallback_writes.labels(kind=kind)
        # The Redis breaker (daemon/breaker.py): open while Redis is known to hang.
        self.redis_breaker_open = Gauge(
            "engagement_redis_breaker_open",
            "1 while this process's Redis breaker is open: a call timed out and Redis has not answered"
            " since, so Redis calls fail at once (fallbacks or 503).",
            registry=r,
        )
        self.redis_breaker_trips = Counter(
            "engagement_redis_breaker_trips",
            "Times the Redis breaker opened (a call got no answer within ENGAGEMENT_REDIS_TIMEOUT_S).",
            registry=r,
        )
        # Live counts (daemon/live.py): streams is "content" or "creator", transport "websocket" or "sse".
        self.live_connections = Gauge(
            "engagement_live_connections",
            "Open live count connections, by stream and transport.",
            ["stream", "transport"],
            registry=r,
        )
        self.live_messages = Counter(
            "engagement_live_messages",
            "Count messages sent on live connections (first messages and changes; not keepalives).",
            ["stream", "transport"],
            registry=r,
        )
        self.live_dropped = Counter(
            "engagement_live_dropped",
            "Live connections the server closed on a client that did not read for"
            " ENGAGEMENT_LIVE_SEND_TIMEOUT_S.",
            ["stream", "transport"],
            registry=r,
        )
        for stream in ("content", "creator"):
            for transport in ("websocket", "sse"):
                self.live_connections.labels(stream=stream, transport=transport)
                self.live_messages.labels(stream=stream, transport=transport)
                self.live_dropped.labels(stream=stream, transport=transport)
        self.live_watched = Gauge(
            "engagement_live_watched",
            "Items and creators with at least one live connection in this process, by stream.",
            ["stream"],
            registry=r,
        )
        self.live_tick_seconds = Histogram(
            "engagement_live_tick_duration_seconds",
            "Time of one live tick: the counts of every watched item (or creator) read and compared.",
            ["stream"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.live_tick_errors = Counter(
            "engagement_live_tick_errors",
            "Live ticks whose read failed (Redis and Postgres unavailable); the clients keep their last"
            " counts.",
            ["stream"],
            registry=r,
        )
        for stream in ("content", "creator"):
            self.live_watched.labels(stream=stream)
            self.live_tick_seconds.labels(stream=stream)
            self.live_tick_errors.labels(stream=stream)
        # Flusher (Redis deltas -> Postgres).
        r = flusher
        self.flushed_rows = Counter(
            "engagement_flush_rows", "content_counters rows written by the flusher.", registry=r
        )
        self.flushed_history_rows = Counter(
            "engagement_flush_history_rows",
            "watch_history rows written by the flusher (one per user and item per pass, however many"
            " heartbeats).",
            registry=r,
        )
        self.flushed_batches = Counter(
            "engagement_flush_batches", "Shard batches committed to Postgres by the flusher.", registry=r
        )
        self.skipped_batches = Counter(
            "engagement_flush_batches_already_committed",
            "Captured batches found already in the ledger (a resumed flush); only deleted.",
            registry=r,
        )
        self.flush_errors = Counter(
            "engagement_flush_errors", "Flusher passes that failed and will be retried.", registry=r
        )
        self.flush_seconds = Histogram(
            "engagement_flush_duration_seconds",
            "Time of one flusher pass that wrote something.",
            buckets=FLUSH_BUCKETS,
            registry=r,
        )
        self.flushed_unique_rows = Counter(
            "engagement_flush_unique_viewers_rows",
            "content_unique_viewers_daily rows upserted by the flusher (current HLL counts).",
            registry=r,
        )
        self.flush_lag = Gauge(
            "engagement_flush_lag_seconds",
            "Seconds since the flusher last completed a pass (how stale Postgres may be).",
            registry=r,
        )
        # The row filter (daemon/store/rows.py), checked and built by the flusher.
        self.row_filter_complete = Gauge(
            "engagement_row_filter_complete_shards",
            "Shards whose row filter is complete (a missing key it lacks is created new, not read from"
            " Postgres).",
            registry=r,
        )
        self.row_filter_fill = Gauge(
            "engagement_row_filter_fill_ratio",
            "Share of the bits set in the fullest shard's row filter; false positives (needless Postgres"
            " reads) are about its 5th power.",
            registry=r,
        )
        self.row_filter_builds = Counter(
            "engagement_row_filter_builds", "Shard row filters built from Redis and Postgres.", registry=r
        )
        self.row_filter_build_seconds = Gauge(
            "engagement_row_filter_build_duration_seconds", "Time of the last row filter build.", registry=r
        )
        # Redis memory and keys by kind, sampled by the flusher (daemon/redis_memory.py).
        self.redis_memory = RedisMemoryMetrics()
        if flusher is not None:
            flusher.register(self.redis_memory)
        # Reconcile (`engagementd reconcile`, and periodically in the flusher).
        self.reconcile_runs = Counter(
            "engagement_reconcile_runs", "Reconcile runs (live counts checked against Postgres).", registry=r
        )
        self.reconcile_repaired_fields = Counter(
            "engagement_reconcile_repaired_fields",
            "Live counter fields that reconcile found wrong and set to Postgres plus pending deltas.",
            registry=r,
        )
        self.reconcile_drift = Counter(
            "engagement_reconcile_drift",
            "Total absolute difference between the live counts and the true counts, repaired by reconcile.",
            registry=r,
        )
        # Cold keys (docs/redis-memory.md): in every role that reads or writes through the store.
        r = self.registry
        self.cold_hits = Counter(
            "engagement_cold_hits",
            "Cold keys (copies of Postgres) an operation found in Redis, by kind.",
            ["kind"],
            registry=r,
        )
        self.cold_loads = Counter(
            "engagement_cold_loads",
            "Cold keys an operation found missing in Redis and loaded from Postgres, by kind.",
            ["kind"],
            registry=r,
        )
        self.cold_load_seconds = Histogram(
            "engagement_cold_load_duration_seconds",
            "Time of one Postgres read for missing cold keys.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        for kind in COLD_KINDS:
            self.cold_hits.labels(kind=kind)
            self.cold_loads.labels(kind=kind)
        self.redis_oom_refusals = Counter(
            "engagement_redis_oom_refusals",
            "Writes Redis refused at maxmemory with only unflushed data left (answered 503 or retried).",
            ["what"],
            registry=r,
        )
        for what in ("request", "drain", "consumer"):
            self.redis_oom_refusals.labels(what=what)
        self._last_flush = time.monotonic()
        self.flush_lag.set_function(lambda: time.monotonic() - self._last_flush)

    def label_actions(self, actions: list[str]) -> None:
        """Create the per-action series at zero, so that rates exist before the first refusal."""
        for action in actions:
            self.rate_limited.labels(action=action)
            self.rate_limit_errors.labels(action=action)

    def flush_completed(self) -> None:
        self._last_flush = time.monotonic()

    def track_buffer(self, buffer: BufferStats) -> None:
        self._buffer = buffer

    def render(self) -> bytes:
        return generate_latest(self.registry)
