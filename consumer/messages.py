"""Kafka message values: decoding and validation, one function per topic.

``engagement.ingest`` carries the seed-003 envelope ``{event_id, timestamp, source_service, payload}``
around a payload ``{event_type, content_id, user_id?, watch_duration_seconds?, ...}``; the envelope is
a minimum (extra fields are ignored), as are payload fields this service does not use (``creator_id``,
``content_type``, ``session_id``). ``media.published`` and ``user.deleted`` carry the same envelope.

A value that cannot be decoded or validated raises ``Invalid`` with a stable machine code: the consumer
dead-letters it at once (it would fail the same way on every try).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.events import (
    MEDIA_ADDED_TO_PLAYLIST,
    MEDIA_COMPLETED,
    MEDIA_DISLIKED,
    MEDIA_LIKED,
    MEDIA_REPLAY,
    MEDIA_SHARED,
    MEDIA_SKIPPED,
    MEDIA_STARTED,
)
from daemon.ids import ID_CHARS
from daemon.keys import PLAYBACK_COUNTERS

# What each event type of engagement.ingest does (docs/kafka.md, "Kafka consumer").
VIEW = 0  # media_started: one view through the view buffer
SIGNAL = 1  # media_completed / media_skipped / media_replay: a playback counter through the buffer
REACTION = 2  # media_liked / media_disliked: set_reaction.lua, as POST .../like and .../dislike
SHARE = 3  # media_shared: a shares row and a count, as POST .../shares
IGNORED = 4  # media_added_to_playlist: nothing to count here (playlists are written over HTTP)
KINDS = {
    MEDIA_STARTED: VIEW,
    MEDIA_COMPLETED: SIGNAL,
    MEDIA_SKIPPED: SIGNAL,
    MEDIA_REPLAY: SIGNAL,
    MEDIA_LIKED: REACTION,
    MEDIA_DISLIKED: REACTION,
    MEDIA_SHARED: SHARE,
    MEDIA_ADDED_TO_PLAYLIST: IGNORED,
}
REACTION_ACTIONS = {MEDIA_LIKED: "like", MEDIA_DISLIKED: "dislike"}
CONTENT_TYPES = ("VIDEO", "AUDIO")
DEFAULT_SHARE_PLATFORM = "unspecified"
_PLATFORM = re.compile(r"[a-z0-9_\-]{1,32}")
_ENVELOPE_STRINGS = ("event_id", "timestamp", "source_service")


class Invalid(Exception):
    """A message value that can never be applied: ``code`` goes to the dead letter's headers."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class IngestEvent:
    kind: int
    event_type: str
    content_id: str
    user_id: str | None
    watch_seconds: int  # 0 when absent
    platform: str = DEFAULT_SHARE_PLATFORM
    external: bool = False


class Validator:
    def __init__(self, id_max_len: int, watch_seconds_max: int) -> None:
        self.id_re = re.compile(f"{ID_CHARS}{{1,{id_max_len}}}")
        self._watch_max = watch_seconds_max

    def ingest(self, value: bytes | None) -> IngestEvent:
        payload = _payload(value)
        event_type = payload.get("event_type")
        kind = KINDS.get(event_type) if type(event_type) is str else None
        if kind is None:
            raise Invalid("invalid_event_type", f"event_type must be one of {', '.join(sorted(KINDS))}.")
        content_id = self._checked_id(payload.get("content_id"), "content_id")
        user_id = payload.get("user_id")
        if user_id is not None:
            user_id = self._checked_id(user_id, "user_id")
        elif kind in (REACTION, SHARE):
            raise Invalid("missing_user_id", f"{event_type} needs a user_id.")
        seconds = payload.get("watch_duration_seconds")
        if seconds is None:
            seconds = 0
        elif type(seconds) is not int or not 0 <= seconds <= self._watch_max:
            raise Invalid(
                "invalid_watch_seconds",
                f"watch_duration_seconds must be null or an integer from 0 to {self._watch_max}.",
            )
        event = IngestEvent(kind, event_type, content_id, user_id, seconds)
        if kind == SHARE:
            platform = payload.get("platform", DEFAULT_SHARE_PLATFORM)
            if type(platform) is not str or not _PLATFORM.fullmatch(platform):
                raise Invalid("invalid_platform", "platform must be 1 to 32 characters of a-z 0-9 _ -.")
            external = payload.get("external", False)
            if type(external) is not bool:
                raise Invalid("invalid_external", "external must be true or false.")
            event.platform, event.external = platform, external
        return event

    def published(self, value: bytes | None) -> tuple[str, str, str]:
        """media.published (seed 003) -> (content_id, creator_id, content_type) for the registry."""
        payload = _payload(value)
        content_id = self._checked_id(payload.get("content_id"), "content_id")
        creator_id = self._checked_id(payload.get("creator_id"), "creator_id")
        content_type = payload.get("content_type")
        if content_type not in CONTENT_TYPES:
            raise Invalid("invalid_content_type", "content_type must be VIDEO or AUDIO.")
        return content_id, creator_id, content_type

    def user_deleted(self, value: bytes | None) -> str:
        """user.deleted -> the user id to purge."""
        return self._checked_id(_payload(value).get("user_id"), "user_id")

    def _checked_id(self, value: Any, name: str) -> str:
        if type(value) is not str or not self.id_re.fullmatch(value):
            raise Invalid(f"invalid_{name}", f"{name} must be an id of A-Z a-z 0-9 _ . : - characters.")
        return value


def _payload(value: bytes | None) -> dict[str, Any]:
    """The envelope's payload; Invalid when the value is not a JSON envelope."""
    try:
        event = orjson.loads(value)  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        raise Invalid("malformed", "The message value is not JSON.") from None
    if type(event) is not dict:
        raise Invalid("invalid_envelope", "The message value is not a JSON object.")
    payload = event.get("payload")
    if type(payload) is not dict or any(type(event.get(k)) is not str for k in _ENVELOPE_STRINGS):
        raise Invalid(
            "invalid_envelope",
            "The envelope needs event_id, timestamp and source_service strings and a payload object.",
        )
    return payload


__all__ = ["Invalid", "IngestEvent", "Validator", "PLAYBACK_COUNTERS"]
