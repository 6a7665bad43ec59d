"""``EngagementEvents`` publishes ``user.engagement.events`` (seed 003) and
``engagement.subscription.changed``.

Request handlers only append a small tuple to a bounded list (views: no envelope, no lookup on the
request path); a background task takes the list every ``buffer_flush_interval_ms``, looks the items up
in the content registry in bulk (daemon/registry.py: one pipelined HMGET per shard for what the cache
misses), and hands the enveloped events to the ``EventProducer``. An item the registry does not know
gives ``creator_id`` and ``content_type`` "". Events that do not fit in the list are counted in
``engagement_events_pending_dropped_total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from daemon.events import (
    MEDIA_ADDED_TO_PLAYLIST,
    MEDIA_DISLIKED,
    MEDIA_LIKED,
    MEDIA_SHARED,
    SUBSCRIBED,
    SUBSCRIPTION_CHANGED,
    UNSUBSCRIBED,
    USER_ENGAGEMENT_EVENTS,
    EventProducer,
)
from daemon.ids import Playback
from daemon.loops import Loop
from daemon.metrics import Metrics
from daemon.registry import UNKNOWN, ContentRegistry
from daemon.settings import Settings

log = logging.getLogger(__name__)

_REACTION_EVENTS = {"liked": MEDIA_LIKED, "disliked": MEDIA_DISLIKED}
_EMIT_SLICE = 2000  # events emitted between two yields to the event loop


class EngagementEvents(Loop):
    """Bounded list of events to publish, drained in bulk by a background loop."""

    name = "engagement-events"

    def __init__(
        self, settings: Settings, producer: EventProducer, registry: ContentRegistry, metrics: Metrics
    ) -> None:
        super().__init__()
        self.enabled = producer.enabled
        self._settings = settings
        self._producer = producer
        self._registry = registry
        self._pending: list[Playback] = []
        self._max = settings.events_pending_max
        self._interval_s = settings.buffer_flush_interval_ms / 1000
        self.dropped = 0  # events that did not fit in the list, or were lost at shutdown
        self.published = 0  # events handed to the producer
        metrics.registry.register(_EventsCollector(self))

    # -- request path: append only ------------------------------------------------------------

    def playback(self, event: Playback) -> None:
        """One view or playback signal with a user (the caller checked ``enabled``)."""
        if len(self._pending) < self._max:
            self._pending.append(event)
        else:
            self.dropped += 1

    def playback_many(self, events: list[Playback]) -> None:
        room = self._max - len(self._pending)
        if room >= len(events):
            self._pending += events
        else:
            self.dropped += len(events) - max(room, 0)
            if room > 0:
                self._pending += events[:room]

    def reaction(self, user_id: str, content_id: str, state: str) -> None:
        """A like state that changed: media_liked / media_disliked. A removal (state "none") emits
        nothing: seed 003 has no event type for it."""
        event_type = _REACTION_EVENTS.get(state)
        if self.enabled and event_type is not None:
            self.playback((user_id, content_id, event_type, None, ""))

    def share(self, user_id: str, content_id: str) -> None:
        """A share that was recorded: media_shared."""
        if self.enabled:
            self.playback((user_id, content_id, MEDIA_SHARED, None, ""))

    def added_to_playlist(self, user_id: str, content_id: str) -> None:
        """An item added to one of the user's playlists: media_added_to_playlist."""
        if self.enabled:
            self.playback((user_id, content_id, MEDIA_ADDED_TO_PLAYLIST, None, ""))

    def subscription(self, user_id: str, creator_id: str, subscribed: bool) -> None:
        """engagement.subscription.changed, keyed on creator_id, for the Notification Service fan-out.
        Rare next to views, so it is emitted at once rather than through the pending list."""
        if self.enabled:
            action = SUBSCRIBED if subscribed else UNSUBSCRIBED
            payload = {"user_id": user_id, "creator_id": creator_id, "action": action}
            self._producer.emit(SUBSCRIPTION_CHANGED, creator_id, payload)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- background -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled:
            super().start()

    async def run(self) -> None:
        while not self.stopping:
            await self.pause(self._interval_s)
            if self.stopping:
                break
            try:
                await self.publish_once()
            except (RedisError, OSError) as exc:
                log.warning("registry lookup failed (%s); %d events kept for retry", exc, self.pending)
            except Exception:
                log.exception("publishing engagement events failed; %d events kept", self.pending)

    async def publish_once(self) -> int:
        """Enrich and emit what is pending; on a Redis error the events stay pending (bounded)."""
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            info = await self._registry.lookup({event[1] for event in batch})
        except BaseException:
            self._requeue(batch)
            raise
        emit = self._producer.emit
        for start in range(0, len(batch), _EMIT_SLICE):
            if start:
                await asyncio.sleep(0)  # a big backlog must not hold the loop for long
            for user_id, content_id, event_type, watch_seconds, session_id in batch[
                start : start + _EMIT_SLICE
            ]:
                creator_id, content_type = info.get(content_id, UNKNOWN)
                emit(
                    USER_ENGAGEMENT_EVENTS,
                    user_id,
                    {
                        "user_id": user_id,
                        "content_id": content_id,
                        "creator_id": creator_id,
                        "event_type": event_type,
                        "watch_duration_seconds": watch_seconds,
                        "content_type": content_type,
                        "session_id": session_id,
                    },
                )
            self.published += min(_EMIT_SLICE, len(batch) - start)
        return len(batch)

    def _requeue(self, batch: list[Playback]) -> None:
        """Put a batch back in front of what arrived meanwhile, within the bound (oldest kept)."""
        merged = batch + self._pending
        if len(merged) > self._max:
            self.dropped += len(merged) - self._max
            merged = merged[: self._max]
        self._pending = merged

    async def close(self) -> None:
        """Stop the task and publish what is left (before the producer closes)."""
        await self.cancel()
        if not self.enabled:
            return
        try:
            await self.publish_once()
        except (RedisError, OSError) as exc:
            lost = len(self._pending)
            self.dropped += lost
            self._pending = []
            log.error("shutting down: %d engagement events lost, registry unreachable (%s)", lost, exc)


class _EventsCollector(Collector):
    def __init__(self, events: EngagementEvents) -> None:
        self._events = events

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "engagement_events_pending",
            "Engagement events waiting to be enriched and handed to the Kafka producer.",
            value=self._events.pending,
        )
        yield CounterMetricFamily(
            "engagement_events_pending_dropped",
            "Engagement events dropped because the pending list was full (or lost at shutdown).",
            value=self._events.dropped,
        )
