"""What an id and a playback event look like, for every transport: the api's bodies and the consumer's
messages are validated by the same rules."""

from __future__ import annotations

import re

from daemon.keys import PLAYBACK_COUNTERS

ID_CHARS = r"[A-Za-z0-9_.:\-]"
SESSION_ID_MAX_LEN = 128
MEDIA_STARTED = "media_started"  # the default event_type: a view
# event_type values of the view endpoints (null means media_started); the others count as signals
EVENT_TYPES = frozenset({MEDIA_STARTED, *PLAYBACK_COUNTERS})

# A view or playback signal to publish: user_id, content_id, event_type, watch_seconds (None when
# absent), session_id ("" when absent).
Playback = tuple[str, str, str, int | None, str]


def id_pattern(max_len: int) -> re.Pattern[str]:
    """One valid id of at most ``max_len`` characters (use with ``fullmatch``)."""
    return re.compile(f"{ID_CHARS}{{1,{max_len}}}")


def lines_pattern(max_len: int) -> re.Pattern[str]:
    """Valid ids joined by newlines: one fullmatch checks a whole list."""
    return re.compile(f"(?:{ID_CHARS}{{1,{max_len}}}\n)*{ID_CHARS}{{1,{max_len}}}")


# The names of a like state (-1, 0, 1) and of a subscription state (0, 1) in answers and events.
STATE_NAMES = {1: "liked", -1: "disliked", 0: "none"}
SUBSCRIPTION_STATES = {1: "subscribed", 0: "none"}
