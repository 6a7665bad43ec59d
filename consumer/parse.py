"""A consumer batch's messages parsed: its view counts, its actions, its dead letters (step 1 of
consumer/batch.py).

The common shapes of a view or playback signal are checked inline (``_fast_view``); anything else goes
through ``Validator`` (consumer/messages.py), which applies the same rules and names the precise error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from confluent_kafka import Message

from consumer.actions import PURGE, REGISTRY, Action, ingest_action
from consumer.actions import REACTION as REACTION_ACTION
from consumer.actions import SHARE as SHARE_ACTION
from consumer.dlq import DeadLetter
from consumer.messages import KINDS, REACTION, SHARE, SIGNAL, VIEW, Invalid, Validator
from daemon.keys import PLAYBACK_COUNTERS
from daemon.settings import Settings, ingest_topics

_loads = orjson.loads
_KINDS = KINDS

TopicPartition = tuple[str, int]
Groups = dict[TopicPartition, list[Message]]  # a batch's messages per partition, in offset order
# ids of views, ids and seconds of watch time, playback signals (counter -> ids), and the views with
# a user id as parallel lists (content ids, user ids)
Views = tuple[list[str], list[str], list[int], dict[str, list[str]], list[str], list[str]]


@dataclass
class Parsed:
    """What a batch's messages ask for."""

    ids: list[str] = field(default_factory=list)  # views
    watch_ids: list[str] = field(default_factory=list)  # watch time: ids ...
    watch_seconds: list[int] = field(default_factory=list)  # ... and seconds
    signals: dict[str, list[str]] = field(default_factory=dict)  # playback counter -> ids
    # the views that carry a user, as parallel lists (content ids, user ids), as the HTTP batch path
    # collects them for unique viewers
    viewer_ids: list[str] = field(default_factory=list)
    viewer_users: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    counted: dict[str, int] = field(default_factory=dict)  # per topic: messages counted or ignored

    @property
    def views(self) -> Views:
        return self.ids, self.watch_ids, self.watch_seconds, self.signals, self.viewer_ids, self.viewer_users


class BatchParser:
    def __init__(self, settings: Settings) -> None:
        self._validator = Validator(settings.content_id_max_len, settings.watch_seconds_max)
        self._id_ok = self._validator.id_re.fullmatch
        self._watch_max = settings.watch_seconds_max
        self._ingest = frozenset(ingest_topics(settings))
        self._published = settings.consumer_published_topic
        self._user_deleted = settings.consumer_user_deleted_topic

    def parse(self, fresh: Groups) -> Parsed:
        """The batch's view counts, its actions, its dead letters, and per topic the messages counted
        through the buffer (views, signals) or deliberately ignored."""
        parsed = Parsed()
        validator = self._validator
        for (topic, _), group in fresh.items():
            if topic in self._ingest:
                self._ingest_group(topic, group, parsed)
            elif topic == self._published:
                for msg in group:
                    try:
                        parsed.actions.append(Action(msg, REGISTRY, validator.published(msg.value())))
                    except Invalid as exc:
                        parsed.dead.append(DeadLetter.of(msg, exc.code, exc.message, 0))
            elif topic == self._user_deleted:
                for msg in group:
                    try:
                        parsed.actions.append(Action(msg, PURGE, (validator.user_deleted(msg.value()),)))
                    except Invalid as exc:
                        parsed.dead.append(DeadLetter.of(msg, exc.code, exc.message, 0))
            else:  # not subscribed: cannot happen, but never drop silently
                for msg in group:
                    parsed.dead.append(DeadLetter.of(msg, "unknown_topic", "The consumer has no handler.", 0))
        return parsed

    def _ingest_group(self, topic: str, group: list[Message], parsed: Parsed) -> None:
        """One partition's messages of an ingest topic, added to ``parsed`` (locals: the hot loop)."""
        ids, watch_ids, watch_seconds, signals = (
            parsed.ids,
            parsed.watch_ids,
            parsed.watch_seconds,
            parsed.signals,
        )
        viewer_ids, viewer_users, actions, dead = (
            parsed.viewer_ids,
            parsed.viewer_users,
            parsed.actions,
            parsed.dead,
        )
        before = len(dead) + len(actions)
        parse = self._validator.ingest
        fast_view = self._fast_view
        for msg in group:
            value = msg.value()
            fast = fast_view(value)  # the common shapes, checked inline
            if fast is not None:
                content_id, user_id, seconds, counter = fast
                if counter is None:
                    ids.append(content_id)
                    if user_id is not None:
                        viewer_ids.append(content_id)
                        viewer_users.append(user_id)
                else:
                    signals.setdefault(counter, []).append(content_id)
                if seconds:
                    watch_ids.append(content_id)
                    watch_seconds.append(seconds)
                continue
            try:
                event = parse(value)
            except Invalid as exc:
                dead.append(DeadLetter.of(msg, exc.code, exc.message, 0))
                continue
            kind = event.kind
            if kind == VIEW:
                ids.append(event.content_id)
                if event.user_id is not None:
                    viewer_ids.append(event.content_id)
                    viewer_users.append(event.user_id)
            elif kind == SIGNAL:
                signals.setdefault(PLAYBACK_COUNTERS[event.event_type], []).append(event.content_id)
            elif kind == REACTION:
                actions.append(ingest_action(msg, event, REACTION_ACTION))
                continue
            elif kind == SHARE:
                actions.append(ingest_action(msg, event, SHARE_ACTION))
                continue
            else:  # media_added_to_playlist
                continue
            if event.watch_seconds:
                watch_ids.append(event.content_id)
                watch_seconds.append(event.watch_seconds)
        n = len(group) - (len(dead) + len(actions) - before)
        if n:
            parsed.counted[topic] = parsed.counted.get(topic, 0) + n

    def _fast_view(self, value: bytes | None) -> tuple[str, str | None, int, str | None] | None:
        """(content_id, user_id, watch seconds, playback counter or None for a view) of a valid view
        or playback signal; None for anything else, which then goes through Validator.ingest (the
        same rules, with the precise error)."""
        try:
            event = _loads(value)  # type: ignore[arg-type]
            payload = event["payload"]
            kind = _KINDS[payload["event_type"]]
            content_id = payload["content_id"]
        except Exception:  # noqa: BLE001 - anything odd takes the precise path
            return None
        if (
            kind > SIGNAL
            or type(content_id) is not str
            or not self._id_ok(content_id)
            or type(payload) is not dict
            or type(event.get("event_id")) is not str
            or type(event.get("timestamp")) is not str
            or type(event.get("source_service")) is not str
        ):
            return None
        user_id = payload.get("user_id")
        if user_id is not None and (type(user_id) is not str or not self._id_ok(user_id)):
            return None
        seconds = payload.get("watch_duration_seconds")
        if seconds is None:
            seconds = 0
        elif type(seconds) is not int or not 0 <= seconds <= self._watch_max:
            return None
        return (
            content_id,
            user_id,
            seconds,
            None if kind == VIEW else PLAYBACK_COUNTERS[payload["event_type"]],
        )
