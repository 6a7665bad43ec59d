"""One typed settings object, read from the environment in one place.

The four ``ENGAGEMENT_REDIS_URL``, ``ENGAGEMENT_DATABASE_URL``, ``ENGAGEMENT_KAFKA_BOOTSTRAP`` and
``ENGAGEMENT_JWT_SECRET`` / ``ENGAGEMENT_JWT_PUBLIC_KEY`` names are a public contract; every other
setting is ``ENGAGEMENT_`` + the field name in upper case (``flush_interval_ms`` ->
``ENGAGEMENT_FLUSH_INTERVAL_MS``). Units are in the names.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date

from daemon.ratelimit import parse_limits

PREFIX = "ENGAGEMENT_"


class SettingsError(ValueError):
    """A setting in the environment could not be parsed."""


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # ENGAGEMENT_REDIS_URL names one node of a Redis Cluster
    database_url: str = "postgresql://postgres@127.0.0.1:5432/engagement"
    # Unset: events disabled (a warning at start). "mock": librdkafka's in-process mock cluster.
    kafka_bootstrap: str = ""
    kafka_queue_max_messages: int = 100_000  # librdkafka's local queue
    kafka_retry_max_events: int = 100_000  # events kept in process for retry when that queue is full
    kafka_delivery_attempts: int = 3
    kafka_message_timeout_ms: int = 30_000
    kafka_linger_ms: int = 5
    kafka_poll_interval_ms: int = 50
    kafka_flush_timeout_s: float = 10.0  # on shutdown, how long to keep delivering
    # Playback and like events wait in a list (built and sent in bulk by a background task): its bound.
    events_pending_max: int = 100_000
    # Content registry (creator_id, content_type of events): per-process cache in front of Redis.
    registry_cache_size: int = 10_000
    registry_cache_ttl_s: float = 60.0
    jwt_secret: str = ""
    jwt_public_key: str = ""  # path to an RS256 public key PEM
    jwt_cache_size: int = 10_000

    # Redis key layout: every key of one content item carries the hash tag {s:N}, N = crc32(id) % shards.
    shards: int = 256

    # Local aggregation buffer (per api process).
    buffer_flush_interval_ms: int = 100
    buffer_flush_items: int = 20_000  # drain early when this many distinct items are waiting
    buffer_max_items: int = 200_000  # distinct items buffered + in flight; past it views get 503
    buffer_retry_max_ms: int = 5_000  # ceiling of the exponential backoff while Redis is down
    buffer_retry_after_s: int = 1  # Retry-After sent with a 503
    drain_marker_ttl_s: int = 86_400  # how long Redis remembers a silent process's drain mark
    # Applied drains kept per shard as one list entry each until the flusher takes them (eng:{s:N}:vdelta);
    # past it, a drain's increments are added to the delta hash field by field. 0: always the hash.
    view_delta_max_drains: int = 256
    shutdown_drain_timeout_s: float = 30.0  # on SIGTERM, how long the api keeps trying to drain
    # Unique viewers (HyperLogLogs fed by views with a user id, see daemon/views/viewers.py).
    buffer_viewers_max_per_item: int = 10_000  # distinct user ids held per item per drain
    unique_viewers_daily_ttl_s: int = 3 * 86_400  # a daily HLL expires this long after its first view
    unique_viewers_day: str = ""  # YYYY-MM-DD: pin the UTC day of daily HLLs (tests); "": the clock
    # Trending (daemon/trending.py): views per item in 5-minute and 1-hour buckets per shard.
    trending_clock_s: float = 0.0  # epoch seconds: pin the clock of trending buckets (tests); 0: the clock
    trending_cache_ms: int = 2_000  # how long an api process reuses a trending answer
    # Live counts (daemon/live.py): WebSocket and Server-Sent Events streams of an item's or a creator's
    # counts, read once per interval per api process whatever the number of clients.
    live_interval_ms: int = 1_000  # one read per tick; at most one message per connection per tick
    live_max_connections: int = 10_000  # per api process; past it 503 + Retry-After
    live_keepalive_s: float = 15.0  # an idle connection gets a keepalive this often
    live_send_timeout_s: float = 10.0  # a client whose message cannot be sent for this long is dropped

    # Redis as a hot set (docs/redis-memory.md): how long a copy of Postgres stays in Redis once Postgres
    # has all of it and nothing uses it (a TTL, refreshed by each flush that writes a change of it).
    counts_idle_ttl_s: int = 7 * 86_400  # item and creator counts, all-time unique viewers, registry
    state_idle_ttl_s: int = 3 * 86_400  # one user's like state on an item, subscription to a creator
    # A "none" state a read loaded (a signed-in reader of an item they never liked): kept shorter, so that
    # readers cost Redis a key per item for minutes, not days.
    state_read_ttl_s: int = 600
    records_sweep_max: int = 1_000  # expired records (Idempotency-Key answers...) removed per shard per call
    # The row filter (docs/redis-memory.md): a Bloom filter per shard of the keys Postgres has rows for,
    # so that a first like or a new item costs no Postgres read. Megabytes over all shards (each shard's
    # part rounded down to a power of two bits); 0: no filter, every missing key is read from Postgres.
    row_filter_mb: float = 64.0
    row_filter_check_s: float = 60.0  # the flusher checks the filters this often and builds missing ones

    # Per-user sliding-window rate limits: "<action>=<limit>/<window>" with units ms, s, m, h.
    rate_limits: str = (
        "like=100/60s,dislike=100/60s,subscribe=30/60s,share=60/60s,comment=20/60s,"
        "history=600/60s,playlist=120/60s"
    )
    idempotency_ttl_s: int = 86_400  # how long an Idempotency-Key's first answer is kept
    comment_max_chars: int = 10_000  # longest comment body, after trimming (characters)

    # Request limits.
    batch_max_items: int = 10_000
    batch_max_bytes: int = 4 * 1024 * 1024
    body_max_bytes: int = 4096  # single-view body
    content_id_max_len: int = 128
    watch_seconds_max: int = 86_400
    playlists_max_per_user: int = 200
    playlist_items_max: int = 5_000

    # Flusher.
    flush_interval_ms: int = 1_000
    flush_lease_ms: int = 30_000
    flush_ledger_retention_days: int = 7
    reconcile_interval_s: float = 300.0  # the flusher reconciles live counts this often; 0: never
    redis_memory_sample_s: float = 15.0  # the flusher samples Redis memory and keys by kind; 0: never

    # Kafka consumer (`engagementd consume`): one group, three topics (empty topic name: not consumed).
    consumer_group: str = "engagementd"
    consumer_group_protocol: str = "classic"  # or "consumer" (KIP-848: Kafka 4, the mock cluster)
    consumer_ingest_topic: str = "engagement.ingest"  # comma-separated: several topics of that format
    consumer_published_topic: str = "media.published"
    consumer_user_deleted_topic: str = "user.deleted"
    consumer_batch_max_messages: int = 50_000  # messages taken in one batch (~0.5 s at 100k/s)
    consumer_batch_timeout_ms: int = 100  # longest wait to fill a batch
    consumer_retry_max_tries: int = 10  # tries of a failing message before it is dead-lettered
    consumer_retry_base_ms: int = 100  # first backoff between tries, doubled each time
    consumer_session_timeout_ms: int = 45_000  # classic protocol: a member silent this long leaves the group
    consumer_retry_max_ms: int = 5_000  # ceiling of that backoff (and of the wait while Redis is down)

    # Postgres pool.
    db_pool_min: int = 1
    db_pool_max: int = 10
    db_timeout_s: float = 5.0
    redis_timeout_s: float = 2.0
    redis_max_connections: int = 64  # per process; past it a command waits for a free connection

    # Set by `engagementd api --workers N` (N > 1): where workers share metric snapshots.
    metrics_dir: str = ""

    gc_gen0_threshold: int = 50_000  # Python's cyclic GC gen-0 threshold in api processes

    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one JSON object per line (daemon/logs.py)
    dev_data_dir: str = ".data"

    @property
    def row_filter_log2(self) -> int:
        """log2 of each shard's row filter size in bits; 0 when there is no filter."""
        if self.row_filter_mb <= 0:
            return 0
        bits = int(self.row_filter_mb * 8 * 1024 * 1024) // self.shards
        return max(bits.bit_length() - 1, 0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f, raw)
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.shards < 1:
            raise SettingsError("ENGAGEMENT_SHARDS must be at least 1")
        if self.buffer_flush_interval_ms < 1 or self.flush_interval_ms < 1:
            raise SettingsError("flush intervals must be at least 1 ms")
        if self.reconcile_interval_s < 0:
            raise SettingsError("ENGAGEMENT_RECONCILE_INTERVAL_S must be 0 (disabled) or positive")
        if self.redis_memory_sample_s < 0:
            raise SettingsError("ENGAGEMENT_REDIS_MEMORY_SAMPLE_S must be 0 (disabled) or positive")
        if self.row_filter_mb < 0 or self.row_filter_check_s <= 0:
            raise SettingsError(
                "ENGAGEMENT_ROW_FILTER_MB must be 0 (no filter) or positive,"
                " ENGAGEMENT_ROW_FILTER_CHECK_S positive"
            )
        if self.row_filter_mb > 0 and not 10 <= self.row_filter_log2 <= 32:
            raise SettingsError(
                "ENGAGEMENT_ROW_FILTER_MB gives each shard between 2^10 bits and 2^32 bits (512 MB)"
            )
        if self.comment_max_chars < 1:
            raise SettingsError("ENGAGEMENT_COMMENT_MAX_CHARS must be at least 1")
        if self.buffer_max_items < 1 or self.batch_max_items < 1:
            raise SettingsError("buffer and batch limits must be at least 1")
        if self.view_delta_max_drains < 0:
            raise SettingsError(
                "ENGAGEMENT_VIEW_DELTA_MAX_DRAINS must be 0 (the delta hash only) or positive"
            )
        lifetimes = (
            self.counts_idle_ttl_s,
            self.state_idle_ttl_s,
            self.state_read_ttl_s,
            self.drain_marker_ttl_s,
        )
        if min(*lifetimes, self.records_sweep_max) < 1:
            raise SettingsError("idle TTLs, the drain marker TTL and records_sweep_max must be positive")
        if self.buffer_viewers_max_per_item < 1 or self.unique_viewers_daily_ttl_s < 1:
            raise SettingsError("buffer_viewers_max_per_item and unique_viewers_daily_ttl_s must be positive")
        if self.unique_viewers_day:
            try:
                if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.unique_viewers_day):
                    raise ValueError
                date.fromisoformat(self.unique_viewers_day)
            except ValueError:
                message = "ENGAGEMENT_UNIQUE_VIEWERS_DAY must be empty or a YYYY-MM-DD date"
                raise SettingsError(message) from None
        if self.trending_clock_s < 0 or self.trending_cache_ms < 0:
            raise SettingsError("the trending clock and cache must not be negative")
        if self.live_interval_ms < 10 or self.live_max_connections < 0:
            raise SettingsError(
                "ENGAGEMENT_LIVE_INTERVAL_MS must be at least 10,"
                " ENGAGEMENT_LIVE_MAX_CONNECTIONS not negative"
            )
        if self.live_keepalive_s <= 0 or self.live_send_timeout_s <= 0:
            raise SettingsError(
                "ENGAGEMENT_LIVE_KEEPALIVE_S and ENGAGEMENT_LIVE_SEND_TIMEOUT_S must be positive"
            )
        if self.log_format not in ("text", "json"):
            raise SettingsError("ENGAGEMENT_LOG_FORMAT must be text or json")
        if self.playlists_max_per_user < 1 or self.playlist_items_max < 1:
            raise SettingsError("playlist limits must be at least 1")
        if self.consumer_batch_max_messages < 1 or self.consumer_batch_timeout_ms < 1:
            raise SettingsError("consumer batch size and timeout must be at least 1")
        if self.consumer_retry_max_tries < 1 or self.consumer_retry_base_ms < 0:
            raise SettingsError("consumer retries: at least 1 try, a backoff not negative")
        if self.consumer_group_protocol not in ("classic", "consumer"):
            raise SettingsError("ENGAGEMENT_CONSUMER_GROUP_PROTOCOL must be classic or consumer")
        try:
            parse_limits(self.rate_limits)
        except ValueError as exc:
            raise SettingsError(f"ENGAGEMENT_RATE_LIMITS: {exc}") from exc

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        return {PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


def _parse(f: dataclasses.Field[object], raw: str) -> object:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
    except ValueError as exc:
        raise SettingsError(f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind}") from exc
    return raw


def ingest_topics(settings: Settings) -> list[str]:
    """The topics of ``consumer_ingest_topic`` (a comma-separated list)."""
    return [t.strip() for t in settings.consumer_ingest_topic.split(",") if t.strip()]


__all__ = ["Settings", "SettingsError", "ingest_topics"]
