"""The local aggregation buffer: views are counted in process and drained to Redis in batches.

A single view costs a dict update; a bulk batch costs one list extend (its ids are counted in C, with
``Counter``, only when the buffer is cut). Every ``buffer_flush_interval_ms`` (or sooner, once
``buffer_flush_items`` entries wait) the buffer is cut: the queues are swapped for empty ones without an
await in between, so nothing that arrives during a drain can be lost, and the cut is grouped by shard into
drains, each named by this buffer's id and a sequence number per shard, its increments packed as msgpack. A
drain is one ``apply_views`` call per shard, all pipelined in one round trip; the script keeps one mark per
sender and shard (daemon/views/drains.py), so a drain whose reply was lost is retried as is and never counts
twice. An item whose counts Redis no longer holds is loaded from Postgres by the store
(daemon/store/cold.py) before its drain applies.

While Redis fails (or refuses writes at maxmemory, or the Postgres read of a cold item fails), the
drains stay in flight and are retried with exponential backoff; new views keep
coalescing per item. The buffer is bounded (queued + in flight entries, ``buffer_max_items``): past
it a view for a new item is refused (the API answers 503) and counted; views for items already
buffered or in flight are still taken. On close the
buffer refuses new views and drains with a deadline; whatever it could not drain is logged, never
dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter

import asyncpg
from redis.exceptions import OutOfMemoryError, RedisError

from daemon import keys
from daemon.errors import ColdLoadError
from daemon.loops import Backoff, Loop
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.store import Store
from daemon.views.drains import Drain, Signals, group_by_shard, split
from daemon.views.viewers import QueuedViewers

log = logging.getLogger(__name__)


class ViewBuffer(Loop):
    """See the module docstring. ``max_items`` (default ``buffer_max_items``) bounds the distinct items
    queued and in flight; ``viewers_per_item`` (default ``buffer_viewers_max_per_item``) the user ids
    kept per item and cut."""

    name = "view-buffer-drain"

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        *,
        max_items: int | None = None,
        viewers_per_item: int | None = None,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._store = store
        self._metrics = metrics
        # Single views, coalesced per request.
        self._views: dict[str, int] = {}
        self._watch: dict[str, int] = {}
        # Bulk views: the ids of accepted events, counted (in C) only when the buffer is cut.
        self._bulk_ids: list[str] = []
        self._bulk_watch_ids: list[str] = []
        self._bulk_watch_seconds: list[int] = []
        # Playback signals (completions, skips, replays): counter -> {content_id: n}, and bulk ids.
        self._signals: Signals = {}
        self._bulk_signals: dict[str, list[str]] = {}
        self._queued_signals = 0  # entries of both (an upper bound of distinct signal entries)
        # User ids of views, for the unique viewers HLLs (see daemon/views/viewers.py).
        self._viewers = QueuedViewers(viewers_per_item or settings.buffer_viewers_max_per_item)
        self._inflight: list[Drain] = []
        self._inflight_items = 0
        self._inflight_ids: set[str] | None = None  # built on demand, near the bound only
        self._max_items = max_items or settings.buffer_max_items
        self._flush_items = settings.buffer_flush_items
        self._lock = asyncio.Lock()
        self._layout_checked = False
        self._failing = False  # the last apply to Redis failed: the queue is kept folded
        self.process = uuid.uuid4().hex[:16]  # names this buffer's drains (daemon/views/drains.py)
        self._seqs: dict[int, int] = {}  # shard -> sequence of the last drain cut for it
        self.accepted = 0  # view events accepted (monotonic)
        self.refused = 0  # view events refused because the buffer was full or closing
        metrics.track_buffer(self)

    # -- the hot path -------------------------------------------------------------------------

    def add(self, content_id: str, watch_seconds: int = 0, user_id: str | None = None) -> bool:
        """Count one view (of ``user_id`` when known: unique viewers). False when it was refused
        (buffer full or closing): answer 503."""
        views = self._views
        n = views.get(content_id)
        if n is None:
            if self.stopping or (self._full(1) and not self._room_for([content_id])):
                self.refused += 1
                return False
            views = self._views  # _room_for may have compacted the queues
            views[content_id] = views.get(content_id, 0) + 1
            if len(views) >= self._flush_items:
                self.wake()
        else:
            if self.stopping:
                self.refused += 1
                return False
            views[content_id] = n + 1
        if watch_seconds:
            self._watch[content_id] = self._watch.get(content_id, 0) + watch_seconds
        if user_id is not None and self._viewers.add(content_id, user_id):
            self.wake()
        self.accepted += 1
        return True

    def add_signal(self, counter: str, content_id: str, watch_seconds: int = 0) -> bool:
        """Count one playback signal (``counter`` in completions, skips, replays), not a view."""
        counts = self._signals.get(counter)
        n = None if counts is None else counts.get(content_id)
        if self.stopping or (n is None and self._full(1) and not self._room_for([content_id])):
            self.refused += 1
            return False
        counts = self._signals.setdefault(counter, {})  # _room_for may have compacted the queues
        if n is None:
            self._queued_signals += 1
        counts[content_id] = counts.get(content_id, 0) + 1
        if watch_seconds:
            self._watch[content_id] = self._watch.get(content_id, 0) + watch_seconds
        self.accepted += 1
        return True

    def add_many(
        self,
        ids: list[str],
        watch_ids: list[str],
        watch_seconds: list[int],
        signals: dict[str, list[str]] | None = None,
        viewers: tuple[list[str], list[str]] | None = None,
    ) -> bool:
        """Count a batch of view events (one id per event) and playback signals (counter -> one id per
        event), all or nothing. ``viewers``: the views that have a user id, as two parallel lists
        (content ids, user ids; each content id also in ``ids``), for unique viewers. False when
        refused."""
        events = len(ids)
        if signals:
            events += sum(map(len, signals.values()))
        if self.stopping or (self._full(events) and not self._room_for(ids)):
            self.refused += events
            return False
        counted = viewers is not None and viewers[0] is ids  # every view has a user id
        if not counted:
            self._bulk_ids += ids
        if watch_ids:
            self._bulk_watch_ids += watch_ids
            self._bulk_watch_seconds += watch_seconds
        if signals:
            for counter, signal_ids in signals.items():
                self._bulk_signals.setdefault(counter, []).extend(signal_ids)
                self._queued_signals += len(signal_ids)
        self.accepted += events
        if viewers is not None and (
            self._viewers.add_counted(*viewers) if counted else self._viewers.add_many(*viewers)
        ):
            self.wake()
        if len(self._bulk_ids) + self._viewers.counted + self._queued_signals >= self._flush_items:
            self.wake()
        return True

    def _full(self, adding: int) -> bool:
        # Bulk ids count as one item each until they are counted: an upper bound of distinct items.
        queued = len(self._views) + len(self._bulk_ids) + self._viewers.counted + self._queued_signals
        return queued + self._inflight_items + adding > self._max_items

    def _room_for(self, ids: list[str]) -> bool:
        """The exact check behind the cheap bound: fold the bulk ids into per-item counts, then count
        only the items neither queued nor in flight (a view of an item whose drain waits for Redis
        costs one more entry, not a new item). Runs only near the bound."""
        self._compact(viewers=self._failing)
        views = self._views
        if self._inflight_ids is None:
            self._inflight_ids = {c for drain in self._inflight for c in drain.views}
        in_flight = self._inflight_ids
        queued_only = sum(1 for c in views if c not in in_flight)
        new = {c for c in ids if c not in views and c not in in_flight}
        return queued_only + self._queued_signals + self._inflight_items + len(new) <= self._max_items

    # -- introspection ------------------------------------------------------------------------

    def depth(self) -> int:
        """Distinct items queued plus items in flight (read at scrape time, so exact, not cheap)."""
        queued = self._views.keys() | set(self._bulk_ids) | set(self._viewers.counted_ids)
        return len(queued) + self._queued_signals + self._inflight_items

    def pending_views(self) -> int:
        queued = sum(self._views.values()) + len(self._bulk_ids) + self._viewers.counted
        return queued + sum(d.total_views for d in self._inflight)

    def pending_signals(self) -> int:
        """Playback signals (completions, skips, replays) not yet applied to Redis."""
        queued = sum(sum(c.values()) for c in self._signals.values())
        queued += sum(map(len, self._bulk_signals.values()))
        return queued + sum(sum(c.values()) for d in self._inflight for c in d.signals.values())

    @property
    def viewers_dropped(self) -> int:
        """User ids left out of the unique viewers HLLs: their item was at its cap (monotonic)."""
        return self._viewers.dropped

    @property
    def closing(self) -> bool:
        return self.stopping

    # -- draining -----------------------------------------------------------------------------

    async def run(self) -> None:
        interval = self._settings.buffer_flush_interval_ms / 1000
        backoff = Backoff(interval, self._settings.buffer_retry_max_ms / 1000)
        delay = interval
        while not self.stopping:
            await self.pause(delay)
            if self.stopping:
                break
            delay = backoff.reset() if await self.drain_once() else backoff.next()

    async def drain_once(self) -> bool:
        """Apply what is in flight, then cut and apply what is queued. True when all of it landed."""
        async with self._lock:
            for _ in range(2):
                if not self._inflight:
                    self._cut()
                if not self._inflight:
                    return True
                if not await self._apply_inflight():
                    self._failing = True
                    self._compact()
                    return False
                self._failing = False
            return not (self._views or self._bulk_ids or self._queued_signals or self._viewers)

    def _take_queued(self) -> tuple[dict[str, int], dict[str, int], Signals]:
        """Swap the queues for empty ones (no await in between: nothing arriving is lost) and count."""
        counted = self._viewers.take_views()  # the views of batches whose every view has a user id
        views, watch = self._views, self._watch
        ids, watch_ids, watch_seconds = self._bulk_ids, self._bulk_watch_ids, self._bulk_watch_seconds
        signals, bulk_signals = self._signals, self._bulk_signals
        self._views, self._watch = {}, {}
        self._bulk_ids, self._bulk_watch_ids, self._bulk_watch_seconds = [], [], []
        self._signals, self._bulk_signals, self._queued_signals = {}, {}, 0
        for counter, signal_ids in bulk_signals.items():
            counts = Counter(signal_ids)
            for content_id, n in signals.get(counter, {}).items():
                counts[content_id] += n
            signals[counter] = dict(counts)
        signals = {counter: counts for counter, counts in signals.items() if counts}
        if ids or counted:
            counts = Counter(ids)
            counts.update(counted)  # (into an empty Counter: one dict update, in C)
            for content_id, n in views.items():
                counts[content_id] += n
            views = dict(counts)
        for content_id, seconds in zip(watch_ids, watch_seconds, strict=True):
            watch[content_id] = watch.get(content_id, 0) + seconds
        return views, watch, signals

    def _compact(self, viewers: bool = True) -> None:
        """While Redis fails, fold bulk ids into the per-item dicts so memory stays per item; with
        ``viewers``, the queued user ids too (distinct, capped per item). The exact bound check
        (``_room_for``) needs only the views while Redis answers (the user ids leave with the next
        cut); while it fails, it folds the user ids too, so they stay bounded per item."""
        if self._bulk_ids or self._bulk_signals or self._viewers.counted:
            self._views, self._watch, self._signals = self._take_queued()
            self._queued_signals = sum(map(len, self._signals.values()))
        if viewers:
            self._viewers.compact()

    def cut(self) -> list[Drain]:
        """Cut what is queued into drains now (they stay in flight until ``drain_once`` applies them);
        returns every drain in flight. The consumer journals them before applying."""
        self._cut()
        return list(self._inflight)

    def _cut(self) -> None:
        if not (self._views or self._bulk_ids or self._queued_signals or self._viewers):
            return
        views, watch, signals = self._take_queued()
        shards = self._settings.shards
        viewers_by_shard = self._viewers.take(shards)
        day = keys.uv_day(self._settings.unique_viewers_day)  # the day of the cut, kept by retries
        bucket = keys.trend_bucket(self._settings.trending_clock_s)  # likewise
        views_by_shard = dict(group_by_shard(views, shards))
        watch_by_shard = dict(group_by_shard(watch, shards)) if watch else {}
        signals_by_shard: dict[int, Signals] = {}
        for counter, counts in signals.items():
            for shard, group in group_by_shard(counts, shards):
                signals_by_shard.setdefault(shard, {})[counter] = group
        shard_list = views_by_shard.keys()
        if signals_by_shard:
            shard_list = sorted(shard_list | watch_by_shard.keys() | signals_by_shard.keys())
        seqs = self._seqs
        for shard in shard_list:
            parts = split(
                views_by_shard.get(shard, {}),
                watch_by_shard.get(shard, {}),
                signals_by_shard.get(shard, {}),
                viewers_by_shard.get(shard, {}),
            )
            for chunk, chunk_watch, chunk_signals, chunk_viewers in parts:
                seq = seqs[shard] = seqs.get(shard, 0) + 1
                drain = Drain(
                    shard, self.process, seq, chunk, chunk_watch, chunk_signals, chunk_viewers, day, bucket
                )
                self._inflight.append(drain)
                self._inflight_items += drain.items
        self._inflight_ids = None

    async def _apply_inflight(self) -> bool:
        drains = self._inflight
        started = time.perf_counter()
        try:
            if not self._layout_checked:
                await keys.check_shards(self._store.redis, self._settings.shards)
                self._layout_checked = True
            calls = [d.call(self._settings) for d in drains]
            results = await self._store.apply_drains(calls, [d.needed for d in drains])
        except keys.LayoutError as exc:
            self._metrics.redis_flush_errors.inc()
            log.error("%s; %d views kept, not applied", exc, self.pending_views())
            return False
        except (RedisError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Redis unreachable, or the Postgres read of an item Redis no longer holds failed
            self._metrics.redis_flush_errors.inc()
            log.warning("view drain to Redis failed (%s); %d views kept for retry", exc, self.pending_views())
            return False
        self._metrics.redis_flush_seconds.observe(time.perf_counter() - started)
        remaining = []
        applied_views = 0
        for drain, result in zip(drains, results, strict=True):
            if isinstance(result, Exception):
                remaining.append(drain)
                if isinstance(result, OutOfMemoryError):
                    self._metrics.redis_oom_refusals.labels(what="drain").inc()
                elif not isinstance(result, ColdLoadError):
                    log.warning("view drain %d on shard %d failed: %s", drain.seq, drain.shard, result)
            else:
                applied_views += drain.total_views
        self._metrics.redis_flushed_views.inc(applied_views)
        self._inflight = remaining
        self._inflight_items = sum(d.items for d in remaining)
        self._inflight_ids = None
        if remaining:
            self._metrics.redis_flush_errors.inc()
        return not remaining

    async def close(self, timeout_s: float) -> int:
        """Refuse new views, drain with a deadline; returns the views that could not be drained."""
        self.stop()
        await self.join()
        deadline = time.monotonic() + timeout_s
        base = min(self._settings.buffer_flush_interval_ms, self._settings.buffer_retry_max_ms) / 1000
        backoff = Backoff(base, self._settings.buffer_retry_max_ms / 1000)
        while not await self.drain_once():
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)  # backoff between retries, not a wait for a condition
        lost = self.pending_views()
        signals = self.pending_signals()
        if lost or signals:
            log.error(
                "shutting down with %d buffered views and %d playback signals not applied to Redis"
                " (Redis unreachable)",
                lost,
                signals,
            )
        return lost
