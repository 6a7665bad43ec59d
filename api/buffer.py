"""The local aggregation buffer: views are counted in process and drained to Redis in batches.

A view costs a dict update. Every ``buffer_flush_interval_ms`` (or sooner, once
``buffer_flush_items`` distinct items wait) the buffer is cut: the dicts are swapped for empty ones
without an await in between, so nothing that arrives during a drain can be lost, and the cut is
grouped by shard into drains, each with an id. A drain is one ``apply_views`` call per shard, all
pipelined in one round trip; the script remembers applied drain ids, so a drain whose reply was lost
is retried with the same id and never counts twice.

While Redis fails, the drains stay in flight and are retried with exponential backoff; new views keep
coalescing into the dict. The buffer is bounded by distinct items (queued + in flight): past
``buffer_max_items`` a view for a new item is refused (the API answers 503) and counted. On close the
buffer refuses new views and drains with a deadline; whatever it could not drain is logged, never
dropped silently.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from redis.exceptions import RedisError

from daemon import keys
from daemon.metrics import Metrics
from daemon.settings import Settings
from lua import LuaScript

log = logging.getLogger(__name__)

# Upper bound of items in one script call, so that one call never blocks Redis for long.
MAX_ITEMS_PER_CALL = 1000


@dataclass(slots=True)
class Drain:
    shard: int
    drain_id: str
    items: list[tuple[str, int, int]]  # (content_id, views, watch_seconds)

    def call(self, settings: Settings) -> tuple[list[str], list[str | int]]:
        shard = self.shard
        call_keys = [keys.delta_key(shard), keys.drain_key(shard, self.drain_id)]
        args: list[str | int] = [settings.drain_marker_ttl_s]
        for content_id, views, watch in self.items:
            call_keys.append(keys.counts_key(shard, content_id))
            args += (content_id, views, watch)
        return call_keys, args

    @property
    def views(self) -> int:
        return sum(item[1] for item in self.items)


class ViewBuffer:
    def __init__(self, settings: Settings, redis: object, script: LuaScript, metrics: Metrics) -> None:
        self._settings = settings
        self._redis = redis
        self._script = script
        self._metrics = metrics
        self._views: dict[str, int] = {}
        self._watch: dict[str, int] = {}
        self._inflight: list[Drain] = []
        self._inflight_items = 0
        self._max_items = settings.buffer_max_items
        self._flush_items = settings.buffer_flush_items
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._layout_checked = False
        self._task: asyncio.Task[None] | None = None
        self._drain_prefix = uuid.uuid4().hex[:16]
        self._drain_seq = itertools.count(1)
        self.accepted = 0  # view events accepted (monotonic)
        self.refused = 0  # view events refused because the buffer was full or closing
        metrics.track_buffer(self)

    # -- the hot path -------------------------------------------------------------------------

    def add(self, content_id: str, watch_seconds: int = 0) -> bool:
        """Count one view. False when it was refused (buffer full or closing): answer 503."""
        views = self._views
        n = views.get(content_id)
        if n is None:
            if self._closing or len(views) + self._inflight_items >= self._max_items:
                self.refused += 1
                return False
            views[content_id] = 1
            if len(views) >= self._flush_items:
                self._wake.set()
        else:
            if self._closing:
                self.refused += 1
                return False
            views[content_id] = n + 1
        if watch_seconds:
            self._watch[content_id] = self._watch.get(content_id, 0) + watch_seconds
        self.accepted += 1
        return True

    def add_many(self, counts: Mapping[str, int], watch: Mapping[str, int], events: int) -> bool:
        """Count a batch, all or nothing. False when refused (nothing of it is counted)."""
        views = self._views
        new = sum(1 for content_id in counts if content_id not in views)
        if self._closing or (new and len(views) + new + self._inflight_items > self._max_items):
            self.refused += events
            return False
        for content_id, n in counts.items():
            views[content_id] = views.get(content_id, 0) + n
        if watch:
            w = self._watch
            for content_id, s in watch.items():
                w[content_id] = w.get(content_id, 0) + s
        self.accepted += events
        if len(views) >= self._flush_items:
            self._wake.set()
        return True

    # -- introspection ------------------------------------------------------------------------

    def depth(self) -> int:
        return len(self._views) + self._inflight_items

    def pending_views(self) -> int:
        return sum(self._views.values()) + sum(d.views for d in self._inflight)

    @property
    def closing(self) -> bool:
        return self._closing

    # -- draining -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="view-buffer-drain")

    async def _run(self) -> None:
        interval = self._settings.buffer_flush_interval_ms / 1000
        ceiling = max(interval, self._settings.buffer_retry_max_ms / 1000)
        delay = interval
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                break
            delay = interval if await self.drain_once() else min(delay * 2, ceiling)

    async def drain_once(self) -> bool:
        """Apply what is in flight, then cut and apply what is queued. True when all of it landed."""
        async with self._lock:
            for _ in range(2):
                if not self._inflight:
                    self._cut()
                if not self._inflight:
                    return True
                if not await self._apply_inflight():
                    return False
            return not self._views

    def _cut(self) -> None:
        views, watch = self._views, self._watch
        if not views:
            return
        self._views, self._watch = {}, {}
        shards = self._settings.shards
        by_shard: dict[int, list[tuple[str, int, int]]] = {}
        for content_id, n in views.items():
            shard = keys.shard_of(content_id, shards)
            by_shard.setdefault(shard, []).append((content_id, n, watch.get(content_id, 0)))
        prefix = self._drain_prefix
        for shard, items in by_shard.items():
            for start in range(0, len(items), MAX_ITEMS_PER_CALL):
                chunk = items[start : start + MAX_ITEMS_PER_CALL]
                self._inflight.append(Drain(shard, f"{prefix}-{next(self._drain_seq)}", chunk))
                self._inflight_items += len(chunk)

    async def _apply_inflight(self) -> bool:
        drains = self._inflight
        started = time.perf_counter()
        try:
            if not self._layout_checked:
                await keys.check_shards(self._redis, self._settings.shards)
                self._layout_checked = True
            results = await self._script.call_many(self._redis, [d.call(self._settings) for d in drains])
        except keys.LayoutError as exc:
            self._metrics.redis_flush_errors.inc()
            log.error("%s; %d views kept, not applied", exc, self.pending_views())
            return False
        except (RedisError, OSError) as exc:
            self._metrics.redis_flush_errors.inc()
            log.warning("view drain to Redis failed (%s); %d views kept for retry", exc, self.pending_views())
            return False
        self._metrics.redis_flush_seconds.observe(time.perf_counter() - started)
        remaining = []
        applied_views = 0
        for drain, result in zip(drains, results, strict=True):
            if isinstance(result, Exception):
                remaining.append(drain)
                log.warning("view drain %s on shard %d failed: %s", drain.drain_id, drain.shard, result)
            else:
                applied_views += drain.views
        self._metrics.redis_flushed_views.inc(applied_views)
        self._inflight = remaining
        self._inflight_items = sum(len(d.items) for d in remaining)
        if remaining:
            self._metrics.redis_flush_errors.inc()
        return not remaining

    async def close(self, timeout_s: float) -> int:
        """Refuse new views, drain with a deadline; returns the views that could not be drained."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        deadline = time.monotonic() + timeout_s
        delay = min(self._settings.buffer_flush_interval_ms, self._settings.buffer_retry_max_ms) / 1000
        while not await self.drain_once():
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)  # backoff between retries, not a wait for a condition
            delay = min(delay * 2, self._settings.buffer_retry_max_ms / 1000)
        lost = self.pending_views()
        if lost:
            log.error("shutting down with %d buffered views not applied to Redis (Redis unreachable)", lost)
        return lost
