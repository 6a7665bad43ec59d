"""Live counts: the counts of the items (and creators) that clients watch, read once per tick per process
and fanned out to every connection (docs/api.md "Live counts"; docs/design.md, decision 11).

A ``Hub`` holds one ``Topic`` per watched item (or creator). Every ``ENGAGEMENT_LIVE_INTERVAL_MS`` it
reads the counts of all its topics in one call (``read_stats``: one Redis round trip per shard involved;
creators: one Postgres query), whatever the number of connections, and publishes each topic whose counts
changed: the message is serialized once per topic and shared by its connections. A connection is a
``Feed``: a flag that its topic changed. Its ``pump`` sends the topic's newest message (a slot, never a
queue: counts that changed twice before a slow client read them are sent once), at most one per interval,
and a keepalive when idle; a send that cannot complete within ``ENGAGEMENT_LIVE_SEND_TIMEOUT_S`` drops
that client alone. Transports (api/live.py) give the pump their ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from daemon.core import Core
from daemon.creators import creators_stats
from daemon.errors import PG_ERRORS, REDIS_ERRORS, DomainError
from daemon.loops import Loop
from daemon.stats import read_stats
from daemon.timefmt import utc_timestamp

log = logging.getLogger(__name__)

# read(ids) -> {id: counts}; raises Unavailable (or a Redis/Postgres error) when nothing can answer.
Reader = Callable[[list[str]], Awaitable[dict[str, dict[str, Any]]]]


class Message:
    """One count message, serialized once for every connection: ``text`` for WebSocket frames,
    ``event`` for Server-Sent Events."""

    __slots__ = ("event", "text")

    def __init__(self, body: dict[str, Any]) -> None:
        self.text = orjson.dumps({**body, "ts": utc_timestamp(datetime.now(UTC))}).decode()
        self.event = b"data: " + self.text.encode() + b"\n\n"


class Topic:
    __slots__ = ("body", "feeds", "key", "message", "ready")

    def __init__(self, key: str) -> None:
        self.key = key
        self.feeds: set[Feed] = set()
        self.body: dict[str, Any] | None = None  # the counts last published (without "ts")
        self.message: Message | None = None
        self.ready: asyncio.Future[None] | None = None  # the first read


class Feed:
    """One connection's subscription: ``changed`` is set when its topic publishes (or the hub closes)."""

    __slots__ = ("changed", "topic")

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.changed = asyncio.Event()


class Dropped(Exception):
    """The client did not take a message within the send timeout."""


class Hub(Loop):
    """The topics of one stream ("content" or "creator") watched in this process."""

    def __init__(self, core: Core, stream: str, read: Reader) -> None:
        super().__init__()
        self.name = f"live-{stream}"
        self.stream = stream
        self.read = read
        self.metrics = core.metrics
        settings = core.settings
        self.interval_s = settings.live_interval_ms / 1000
        self.keepalive_s = settings.live_keepalive_s
        self.send_timeout_s = settings.live_send_timeout_s
        self.topics: dict[str, Topic] = {}
        self.closing = asyncio.Event()
        self.ticks = 0

    async def subscribe(self, key: str) -> Feed:
        """A feed of ``key``'s counts, once they have been read (at once when the key is already watched).
        Raises ``Unavailable`` when the first read fails; nothing stays subscribed then."""
        topic = self.topics.get(key)
        if topic is None:
            topic = self.topics[key] = Topic(key)
            topic.ready = asyncio.ensure_future(self._first_read(topic))
            self.metrics.live_watched.labels(stream=self.stream).set(len(self.topics))
        feed = Feed(topic)
        topic.feeds.add(feed)
        assert topic.ready is not None
        try:
            await asyncio.shield(topic.ready)
        except BaseException:
            self.unsubscribe(feed)
            raise
        return feed

    def unsubscribe(self, feed: Feed) -> None:
        topic = feed.topic
        topic.feeds.discard(feed)
        if not topic.feeds and self.topics.get(topic.key) is topic:
            del self.topics[topic.key]
            self.metrics.live_watched.labels(stream=self.stream).set(len(self.topics))

    async def _first_read(self, topic: Topic) -> None:
        try:
            found = await self.read([topic.key])
        except (DomainError, *REDIS_ERRORS, *PG_ERRORS):
            if self.topics.get(topic.key) is topic:  # the next subscriber tries again
                del self.topics[topic.key]
                self.metrics.live_watched.labels(stream=self.stream).set(len(self.topics))
            raise
        self._publish(topic, found[topic.key])

    def _publish(self, topic: Topic, body: dict[str, Any]) -> None:
        if body == topic.body:
            return
        topic.body = body
        topic.message = Message(body)
        for feed in topic.feeds:
            feed.changed.set()

    async def run(self) -> None:
        while not self.stopping:
            started = time.monotonic()
            if any(topic.message is not None for topic in self.topics.values()):
                await self.tick()
            await self.pause(self.interval_s - (time.monotonic() - started))

    async def tick(self) -> None:
        """Read every watched topic once; publish those whose counts changed."""
        started = time.perf_counter()
        keys = [key for key, topic in self.topics.items() if topic.message is not None]
        try:
            found = await self.read(keys)
        except (DomainError, *REDIS_ERRORS, *PG_ERRORS) as exc:
            self.metrics.live_tick_errors.labels(stream=self.stream).inc()
            log.warning("live %s counts not read (%s); clients keep their last counts", self.stream, exc)
            return
        for key, body in found.items():
            topic = self.topics.get(key)
            if topic is not None and topic.message is not None:
                self._publish(topic, body)
        self.ticks += 1
        self.metrics.live_tick_seconds.labels(stream=self.stream).observe(time.perf_counter() - started)

    async def pump(
        self,
        feed: Feed,
        send: Callable[[Message], Awaitable[object]],
        keepalive: Callable[[], Awaitable[object]],
        counted: Callable[[], object],
    ) -> None:
        """Send ``feed``'s topic's messages until the hub closes: the current counts at once (stamped
        now: the topic's message may be older than the connection), then the newest message each time
        it changes, at most one per interval; ``keepalive()`` when nothing was sent for
        ``keepalive_s``. ``counted()`` after each message sent. Raises ``Dropped`` when a send (or a
        keepalive) does not complete within the send timeout."""
        sent: Message | None = None
        last = -self.interval_s
        while not self.closing.is_set():
            feed.changed.clear()
            message = feed.topic.message
            if message is not None and message is not sent:
                wait = last + self.interval_s - time.monotonic()
                if wait > 0 and await self._closed_within(wait):
                    return
                message = feed.topic.message or message  # the newest, if it changed while waiting
                first = sent is None and feed.topic.body is not None
                await self._send(send(Message(feed.topic.body) if first else message))
                counted()
                sent, last = message, time.monotonic()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feed.changed.wait(), self.keepalive_s)
                continue
            if not self.closing.is_set():
                await self._send(keepalive())
                last = time.monotonic()

    async def _send(self, sending: Awaitable[object]) -> None:
        try:
            await asyncio.wait_for(sending, self.send_timeout_s)
        except TimeoutError:
            raise Dropped from None

    async def _closed_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)
        return self.closing.is_set()

    def close(self) -> None:
        """End every pump (shutdown): each returns, and its transport closes its connection."""
        self.closing.set()
        for topic in self.topics.values():
            for feed in topic.feeds:
                feed.changed.set()
        self.stop()


class Live:
    """The live streams of one api process: the hubs, and the connection count they share."""

    def __init__(self, core: Core) -> None:
        self.max_connections = core.settings.live_max_connections
        self.connections = 0
        self._idle = asyncio.Event()
        self._idle.set()

        async def items(ids: list[str]) -> dict[str, dict[str, Any]]:
            return {s.body["content_id"]: s.body for s in await read_stats(core, ids, None)}

        async def creators(ids: list[str]) -> dict[str, dict[str, Any]]:
            return await creators_stats(core, ids)

        self.content = Hub(core, "content", items)
        self.creator = Hub(core, "creator", creators)

    @property
    def hubs(self) -> Iterable[Hub]:
        return (self.content, self.creator)

    def full(self) -> bool:
        return self.connections >= self.max_connections

    def opened(self) -> None:
        self.connections += 1
        self._idle.clear()

    def closed(self) -> None:
        self.connections -= 1
        if self.connections <= 0:
            self._idle.set()

    def start(self) -> None:
        for hub in self.hubs:
            hub.start()

    async def close(self, timeout_s: float) -> None:
        """Close every connection (their transports send close code 1001 or end the stream) and wait up
        to ``timeout_s`` for them to finish."""
        for hub in self.hubs:
            hub.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        for hub in self.hubs:
            await hub.cancel()
