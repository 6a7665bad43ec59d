"""One consumer batch, from Kafka messages to Redis, exactly once per offset.

1. Group the messages by partition; validate every message and count the views and playback signals
   in a view buffer (daemon/views/buffer.py, the HTTP path's own), cut into per-shard drains. This touches
   nothing outside the process, so it runs while Redis still applies the batch ahead (profiled: it
   waited behind that batch's drains when it came after the store's read).
2. Read the idempotency store (one round trip): the applied offset of each partition and the journals
   of unfinished batches. A journal covering one of these partitions is recovered first (its drains
   re-applied, then finished). Messages at or below the applied offset are duplicates: skipped and
   counted, and the rest validated and counted again without them.
   A message that could not be parsed or validated is a dead letter.
3. Apply the actions (likes, shares, registry, purge), each idempotent by its offset (consumer/actions.py);
   retry with backoff; dead-letter those that failed every try.
4. Send the dead letters and wait for Kafka's acknowledgement.
5. Journal the drains with the batch's offset ranges in one call (``begin_consumed``). If another
   batch holds some of these offsets, go back to 1 (it is recovered in 2).
6. Apply the drains (``apply_views.lua``, one pipelined round trip), retrying while Redis is down.
   The loop starts this at once, while the batch ahead may still be applying or finishing.
7. Once the batch ahead is finished: mark the offsets applied and drop the journal in one call
   (``finish_consumed``).

8. Forget the batch's drain marks (nobody re-applies a finished batch's drains), unless another
   consumer took the batch's journal for recovery (``take_journal``; step 7 says so): it may still be
   re-applying them. A batch recovered from another consumer's journal keeps them too: that consumer
   may still be sending the same drains (cut off from Redis, retrying). The sweeper removes marks
   left so after ENGAGEMENT_DRAIN_MARKER_TTL_S.

The caller then commits the offsets to Kafka. A SIGKILL anywhere: before 5, nothing counted is
unmarked except the idempotent actions, which a replay repeats harmlessly; between 5 and 7 the
journal is recovered by whoever reads those partitions next, and the drains' marks (the batch's id and
a sequence per shard, daemon/views/drains.py) make the re-application count once; after 7, the replay is
skipped as duplicates (marks left by a kill before 8 are swept after ENGAGEMENT_DRAIN_MARKER_TTL_S).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from consumer.actions import Abandoned, ActionRunner
from consumer.dlq import DeadLetterProducer
from consumer.metrics import ConsumerMetrics
from consumer.parse import BatchParser, Groups, TopicPartition, Views
from consumer.store import OffsetStore, Range, tp_field
from daemon.errors import ColdLoadError
from daemon.loops import Backoff
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.store import Store
from daemon.store.upgrade import journaled_calls
from daemon.views.buffer import Drain, ViewBuffer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch past step 5 (its drains journaled): ``apply`` applies its drains (step 6), which is safe
    before the batches ahead of it are finished, since a crash recovers every journal; ``finish`` (step
    7, once ``apply`` is done and the batches ahead are finished) marks its offsets applied and returns
    the offset to commit per partition (last offset + 1)."""

    apply: Callable[[], Awaitable[None]]
    finish: Callable[[], Awaitable[dict[TopicPartition, int]]]


class _Conflict(Exception):
    """Another batch reserved some of this batch's offsets: recover it and plan again."""


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        consumer_metrics: ConsumerMetrics,
        offsets: OffsetStore,
        runner: ActionRunner,
        dead_letters: DeadLetterProducer,
        stopping: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._data = store
        self._metrics = metrics
        self._m = consumer_metrics
        self._store = offsets
        self._runner = runner
        self._dlq = dead_letters
        self._stopping = stopping
        self._parser = BatchParser(settings)
        self._in_flight: set[str] = set()  # this process's journaled batches still being applied

    async def process(self, msgs: list[Message]) -> dict[TopicPartition, int]:
        """Apply a batch; returns the offset to commit per partition (last offset + 1)."""
        prepared = await self.prepare(msgs)
        await prepared.apply()
        return await prepared.finish()

    async def prepare(self, msgs: list[Message]) -> Prepared:
        """Steps 1 to 5; returns the rest: ``apply`` (6), which the loop starts at once, while it
        prepares the next batch and while the batch ahead is still being finished, and ``finish`` (7),
        which it runs once the batch ahead is finished."""
        groups: dict[TopicPartition, list[Message]] = {}
        for msg in msgs:
            tp = (msg.topic(), msg.partition())
            group = groups.get(tp)
            if group is None:
                groups[tp] = [msg]
            else:
                group.append(msg)
        for tp, group in groups.items():
            self._m.consumed.labels(tp[0]).inc(len(group))
        while True:
            try:
                return await self._attempt(groups)
            except _Conflict:
                # another consumer's batch (recovered by the next attempt), or this process's own batch
                # still in flight after a rebalance handed the same offsets back: let it finish first
                log.warning("batch offsets reserved by another batch; recovering it and planning again")
                await asyncio.sleep(self._settings.consumer_retry_base_ms / 1000)

    async def _attempt(self, groups: Groups) -> Prepared:
        # Step 1 takes every message: only a batch that met duplicates in step 2 is validated and
        # counted again, without them.
        parsed = self._parser.parse(groups)
        counted_views = self._count(parsed.views)
        fresh, ranges, skipped = await self._fresh(groups)
        if skipped:
            parsed = self._parser.parse(fresh)
            counted_views = self._count(parsed.views)
        actions, dead, counted = parsed.actions, parsed.dead, parsed.counted
        if actions:
            dead += await self._runner.run(actions)
        if dead:
            if not await self._dlq.send(dead, self._stopping):
                raise Abandoned
            for letter in dead:
                self._m.dead_letters.labels(letter.topic, letter.code).inc()
        batch_id = ""
        buffer: ViewBuffer | None = None
        drains: list[Drain] = []
        if counted_views is not None:
            batch_id = uuid.uuid4().hex
            buffer, drains, calls = counted_views
            conflicts = await self._retrying(lambda: self._store.begin(batch_id, ranges, calls))
            if conflicts:
                raise _Conflict(conflicts)
            self._in_flight.add(batch_id)
        commits = {tp: group[-1].offset() + 1 for tp, group in groups.items()}

        async def apply() -> None:
            if buffer is not None:
                await self._drain(buffer)

        async def finish() -> dict[TopicPartition, int]:
            recovered = False
            try:
                if ranges:
                    recovered = await self._retrying(lambda: self._store.finish(batch_id, ranges))
            finally:
                self._in_flight.discard(batch_id)
            if drains and not recovered:  # recovered: another consumer may still be re-applying them
                await self._forget_marks([(d.shard, d.process) for d in drains])
            for topic, n in counted.items():
                self._m.applied.labels(topic).inc(n)
            return commits

        return Prepared(apply, finish)

    async def _fresh(self, groups: Groups) -> tuple[Groups, list[Range], int]:
        """The messages not applied yet, their offset ranges, and how many were skipped."""
        fields = {tp: tp_field(*tp) for tp in groups}
        applied, journals = await self._retrying(lambda: self._store.state(fields.values()))
        wanted = set(fields.values())
        for batch_id, journal_ranges in journals.items():
            if batch_id not in self._in_flight and any(field in wanted for field, _, _ in journal_ranges):
                await self._recover(batch_id)
                for field, _, last in journal_ranges:
                    applied[field] = max(applied.get(field, -1), last)
        fresh: Groups = {}
        ranges: list[Range] = []
        skipped = 0
        for tp, group in groups.items():
            seen = applied.get(fields[tp], -1)
            if group[0].offset() <= seen:
                kept = [m for m in group if m.offset() > seen]
                self._m.duplicates.labels(tp[0]).inc(len(group) - len(kept))
                skipped += len(group) - len(kept)
                group = kept
            if group:
                fresh[tp] = group
                ranges.append((fields[tp], group[0].offset(), group[-1].offset()))
        return fresh, ranges, skipped

    def _count(self, views: Views) -> tuple[ViewBuffer, list[Drain], list[Any]] | None:
        """The batch's views counted in a view buffer and cut into drains (their calls to journal);
        None when it has none."""
        ids, watch_ids, watch_seconds, signals, viewer_ids, viewer_users = views
        if not (ids or signals):
            return None
        settings = self._settings
        # One batch is one cut, so the api's per-cut bounds, which make the api drain early, do not apply:
        # the batch (at most consumer_batch_max_messages events) bounds the items and every item's user
        # ids, and each of those is kept (an item with more distinct viewers in one batch than
        # buffer_viewers_max_per_item still feeds them all to its HyperLogLogs).
        most = max(settings.consumer_batch_max_messages, settings.buffer_max_items)
        buffer = ViewBuffer(settings, self._data, self._metrics, max_items=most, viewers_per_item=most)
        viewers = (viewer_ids, viewer_users) if viewer_ids else None  # unique viewers, as over HTTP
        accepted = buffer.add_many(ids, watch_ids, watch_seconds, signals, viewers)
        assert accepted, "a fresh buffer holds any batch"
        drains = buffer.cut()
        return buffer, drains, [drain.call(settings) for drain in drains]

    def _new_backoff(self) -> Backoff:
        settings = self._settings
        return Backoff(settings.consumer_retry_base_ms / 1000, settings.consumer_retry_max_ms / 1000)

    async def _drain(self, buffer: ViewBuffer) -> None:
        backoff = self._new_backoff()
        while not await buffer.drain_once():  # False: Redis unreachable; the drains stay in flight
            await self._backoff(backoff.next())

    async def _recover(self, batch_id: str) -> None:
        """Finish a batch another consumer (or this one, before a crash) journaled."""
        journal = await self._retrying(lambda: self._store.journal(batch_id))
        if journal is None:
            return  # finished meanwhile
        ranges, journaled = journal
        log.warning("recovering journaled batch %s (%d drains)", batch_id, len(journaled))
        calls = await self._retrying(lambda: journaled_calls(self._data, journaled))
        while calls:
            results = await self._retrying(lambda c=calls: self._data.apply_drains(c, [{}] * len(c)))
            calls = [c for c, result in zip(calls, results, strict=True) if isinstance(result, Exception)]
            if calls:
                await self._backoff(self._settings.consumer_retry_max_ms / 1000)
        await self._retrying(lambda: self._store.finish(batch_id, ranges))
        # Its marks are left to the sweeper (ENGAGEMENT_DRAIN_MARKER_TTL_S), not forgotten: the consumer
        # that journaled the batch may still be sending the same drains (cut off from Redis, retrying),
        # and only the marks make those count once when they land.

    async def _forget_marks(self, marks: list[tuple[int, str]]) -> None:
        """Step 8 (best effort: a mark left behind is swept after ENGAGEMENT_DRAIN_MARKER_TTL_S)."""
        try:
            await self._data.forget_drain_marks(sorted(set(marks)))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.info("drain marks of a finished batch left for the sweeper (%s)", exc)

    async def _retrying(self, call: Callable[[], Any]) -> Any:
        """Await ``call()`` until Redis answers (it is the store: without it nothing can be applied)."""
        backoff = self._new_backoff()
        while True:
            try:
                return await call()
            except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
                log.warning("Redis unreachable (%s); retrying", exc)
            except (OutOfMemoryError, ColdLoadError) as exc:  # the flusher frees memory meanwhile
                self._metrics.redis_oom_refusals.labels(what="consumer").inc()
                log.warning("Redis full of unflushed data (%s); retrying", exc)
            await self._backoff(backoff.next())

    async def _backoff(self, delay: float) -> None:
        self._m.retries.labels("unavailable").inc()
        if self._stopping():
            raise Abandoned
        await asyncio.sleep(delay)  # backoff while a dependency is unreachable
