"""One consumer batch, from Kafka messages to Redis, exactly once per offset.

1. Group the messages by partition; read the idempotency store (one round trip): the applied offset
   of each partition and the journals of unfinished batches. A journal covering one of these
   partitions is recovered first (its drains re-applied, then finished). Messages at or below the
   applied offset are duplicates: skipped and counted.
2. Validate every message. One that cannot be parsed or validated is a dead letter at once.
3. Apply the actions (likes, shares, registry, purge), each idempotent by its offset (consumer/actions.py);
   retry with backoff; dead-letter those that failed every try.
4. Send the dead letters and wait for Kafka's acknowledgement.
5. Count views and playback signals in a view buffer (api/buffer.py, the HTTP path's own), cut it into
   per-shard drains, and journal them with the batch's offset ranges in one call (``begin_consumed``).
   If another batch holds some of these offsets, go back to 1 (it is recovered there).
6. Apply the drains (``apply_views.lua``, one pipelined round trip), retrying while Redis is down.
7. Mark the offsets applied and drop the journal in one call (``finish_consumed``).

The caller then commits the offsets to Kafka. A SIGKILL anywhere: before 5, nothing counted is
unmarked except the idempotent actions, which a replay repeats harmlessly; between 5 and 7 the
journal is recovered by whoever reads those partitions next, and drain ids make the re-application
count once; after 7, the replay is skipped as duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.buffer import Drain, ViewBuffer
from consumer.actions import PURGE, REGISTRY, Abandoned, Action, ActionRunner, ingest_action
from consumer.actions import REACTION as REACTION_ACTION
from consumer.actions import SHARE as SHARE_ACTION
from consumer.dlq import DeadLetter, DeadLetterProducer
from consumer.messages import REACTION, SHARE, SIGNAL, VIEW, Invalid, Validator
from consumer.metrics import ConsumerMetrics
from consumer.store import OffsetStore, Range, tp_field
from daemon.keys import PLAYBACK_COUNTERS
from daemon.metrics import Metrics
from daemon.settings import Settings
from lua import Scripts

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
Groups = dict[TopicPartition, list[Message]]  # a batch's messages per partition, in offset order
# ids of views, ids and seconds of watch time, playback signals (counter -> ids): ViewBuffer.add_many's
Views = tuple[list[str], list[str], list[int], dict[str, list[str]]]


class JournaledBuffer(ViewBuffer):
    """The api's view buffer, used for one batch: cut explicitly so the drains can be journaled
    before they are applied with ``drain_once``."""

    def cut(self) -> list[Drain]:
        self._cut()
        return list(self._inflight)


class _Conflict(Exception):
    """Another batch reserved some of this batch's offsets: recover it and plan again."""


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        redis: Any,
        scripts: Scripts,
        metrics: Metrics,
        consumer_metrics: ConsumerMetrics,
        store: OffsetStore,
        runner: ActionRunner,
        dead_letters: DeadLetterProducer,
        stopping: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._scripts = scripts
        self._metrics = metrics
        self._m = consumer_metrics
        self._store = store
        self._runner = runner
        self._dlq = dead_letters
        self._stopping = stopping
        self._validator = Validator(settings.content_id_max_len, settings.watch_seconds_max)
        self._ingest = settings.consumer_ingest_topic
        self._published = settings.consumer_published_topic
        self._user_deleted = settings.consumer_user_deleted_topic

    async def process(self, msgs: list[Message]) -> dict[TopicPartition, int]:
        """Apply a batch; returns the offset to commit per partition (last offset + 1)."""
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
                await self._attempt(groups)
                break
            except _Conflict:
                log.warning("batch offsets reserved by another batch; recovering it and planning again")
        return {tp: group[-1].offset() + 1 for tp, group in groups.items()}

    async def _attempt(self, groups: dict[TopicPartition, list[Message]]) -> None:
        fresh, ranges = await self._fresh(groups)
        views, actions, dead, ignored = self._parse(fresh)
        if actions:
            dead += await self._runner.run(actions)
        if dead:
            if not await self._dlq.send(dead, self._stopping):
                raise Abandoned
            for letter in dead:
                self._m.dead_letters.labels(letter.topic, letter.code).inc()
        batch_id = ""
        if views[0] or views[3]:
            batch_id = uuid.uuid4().hex
            await self._apply_views(batch_id, ranges, *views)
        if ranges:
            await self._retrying(lambda: self._store.finish(batch_id, ranges))
        counted = len(views[0]) + sum(map(len, views[3].values())) + ignored
        if counted:
            self._m.applied.labels(self._ingest).inc(counted)

    async def _fresh(
        self, groups: dict[TopicPartition, list[Message]]
    ) -> tuple[dict[TopicPartition, list[Message]], list[Range]]:
        fields = {tp: tp_field(*tp) for tp in groups}
        applied, journals = await self._retrying(lambda: self._store.state(fields.values()))
        wanted = set(fields.values())
        for batch_id, journal_ranges in journals.items():
            if any(field in wanted for field, _, _ in journal_ranges):
                await self._recover(batch_id)
                for field, _, last in journal_ranges:
                    applied[field] = max(applied.get(field, -1), last)
        fresh: dict[TopicPartition, list[Message]] = {}
        ranges: list[Range] = []
        for tp, group in groups.items():
            seen = applied.get(fields[tp], -1)
            if group[0].offset() <= seen:
                kept = [m for m in group if m.offset() > seen]
                self._m.duplicates.labels(tp[0]).inc(len(group) - len(kept))
                group = kept
            if group:
                fresh[tp] = group
                ranges.append((fields[tp], group[0].offset(), group[-1].offset()))
        return fresh, ranges

    def _parse(self, fresh: Groups) -> tuple[Views, list[Action], list[DeadLetter], int]:
        ids: list[str] = []
        watch_ids: list[str] = []
        watch_seconds: list[int] = []
        signals: dict[str, list[str]] = {}
        # (content_id, user_id) of the views that carry a user: what the HTTP batch path has too
        viewers: list[tuple[str, str]] = []
        actions: list[Action] = []
        dead: list[DeadLetter] = []
        ignored = 0
        validator = self._validator
        for (topic, _), group in fresh.items():
            if topic == self._ingest:
                parse = validator.ingest
                for msg in group:
                    try:
                        event = parse(msg.value())
                    except Invalid as exc:
                        dead.append(DeadLetter.of(msg, exc.code, exc.message, 0))
                        continue
                    kind = event.kind
                    if kind == VIEW:
                        ids.append(event.content_id)
                        if event.user_id is not None:
                            viewers.append((event.content_id, event.user_id))
                    elif kind == SIGNAL:
                        signals.setdefault(PLAYBACK_COUNTERS[event.event_type], []).append(event.content_id)
                    elif kind == REACTION:
                        actions.append(ingest_action(msg, event, REACTION_ACTION))
                        continue
                    elif kind == SHARE:
                        actions.append(ingest_action(msg, event, SHARE_ACTION))
                        continue
                    else:
                        ignored += 1
                        continue
                    if event.watch_seconds:
                        watch_ids.append(event.content_id)
                        watch_seconds.append(event.watch_seconds)
            elif topic == self._published:
                for msg in group:
                    try:
                        actions.append(Action(msg, REGISTRY, validator.published(msg.value())))
                    except Invalid as exc:
                        dead.append(DeadLetter.of(msg, exc.code, exc.message, 0))
            elif topic == self._user_deleted:
                for msg in group:
                    try:
                        actions.append(Action(msg, PURGE, (validator.user_deleted(msg.value()),)))
                    except Invalid as exc:
                        dead.append(DeadLetter.of(msg, exc.code, exc.message, 0))
            else:  # not subscribed: cannot happen, but never drop silently
                for msg in group:
                    dead.append(DeadLetter.of(msg, "unknown_topic", "The consumer has no handler.", 0))
        return (ids, watch_ids, watch_seconds, signals), actions, dead, ignored

    async def _apply_views(
        self,
        batch_id: str,
        ranges: list[Range],
        ids: list[str],
        watch_ids: list[str],
        watch_seconds: list[int],
        signals: dict[str, list[str]],
    ) -> None:
        settings = self._settings
        buffer = JournaledBuffer(settings, self._redis, self._scripts.apply_views, self._metrics)
        if not buffer.add_many(ids, watch_ids, watch_seconds, signals):
            raise RuntimeError("a batch larger than ENGAGEMENT_BUFFER_MAX_ITEMS")
        calls = [drain.call(settings) for drain in buffer.cut()]
        conflicts = await self._retrying(lambda: self._store.begin(batch_id, ranges, calls))
        if conflicts:
            raise _Conflict(conflicts)
        delay = settings.consumer_retry_base_ms / 1000
        while not await buffer.drain_once():  # False: Redis unreachable; the drains stay in flight
            await self._backoff(delay)
            delay = min(delay * 2, settings.consumer_retry_max_ms / 1000)

    async def _recover(self, batch_id: str) -> None:
        """Finish a batch another consumer (or this one, before a crash) journaled."""
        journal = await self._retrying(lambda: self._store.journal(batch_id))
        if journal is None:
            return  # finished meanwhile
        ranges, calls = journal
        log.warning("recovering journaled batch %s (%d drains)", batch_id, len(calls))
        script = self._scripts.apply_views
        while calls:
            results = await self._retrying(lambda c=calls: script.call_many(self._redis, c))
            calls = [c for c, result in zip(calls, results, strict=True) if isinstance(result, Exception)]
            if calls:
                await self._backoff(self._settings.consumer_retry_max_ms / 1000)
        await self._retrying(lambda: self._store.finish(batch_id, ranges))

    async def _retrying(self, call: Callable[[], Any]) -> Any:
        """Await ``call()`` until Redis answers (it is the store: without it nothing can be applied)."""
        delay = self._settings.consumer_retry_base_ms / 1000
        while True:
            try:
                return await call()
            except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
                log.warning("Redis unreachable (%s); retrying", exc)
            await self._backoff(delay)
            delay = min(delay * 2, self._settings.consumer_retry_max_ms / 1000)

    async def _backoff(self, delay: float) -> None:
        self._m.retries.labels("unavailable").inc()
        if self._stopping():
            raise Abandoned
        await asyncio.sleep(delay)  # backoff while a dependency is unreachable
