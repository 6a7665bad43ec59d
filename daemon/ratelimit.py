"""Per-user sliding-window rate limits (seed 001: 100 likes a minute by default, configurable per action).

One ``rate_limit.lua`` call per request, on the key ``eng:{u:<user_id>}:rl:<action>``: the user hash tag
keeps each call in one slot (docs/design.md, decision 1), so it runs unchanged on Redis Cluster.

Redis being unreachable is the caller's decision: ``RateLimiter.check`` raises redis-py's errors
unchanged. Failing open (serve the request, count the failure in a metric) is the recommended choice for
likes and the like: the limit protects against abuse, not correctness, since the like script itself keeps
state and counts exact, and the Redis-down fallback writes to Postgres anyway. Failing closed would turn a
Redis outage into an outage of every limited endpoint.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.errors import Refused
from daemon.keys import rate_limit_key

if TYPE_CHECKING:
    from daemon.store import Store


@dataclass(frozen=True, slots=True)
class Limit:
    action: str
    limit: int  # requests admitted per window
    window_ms: int


@dataclass(frozen=True, slots=True)
class Decision:
    limit: Limit
    allowed: bool
    remaining: int  # admissions left in the current window after this one
    retry_after_ms: int  # 0 when allowed
    retry_after_s: int  # retry_after_ms rounded up to whole seconds, at least 1 when refused; else 0


class RateLimiter:
    """Checks limits on the store's ``rate_limit`` script (daemon/store/limits.py)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Request ids only need to be unique within one user's window: a per-process random prefix and
        # a counter are, and cost less than a uuid per request.
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count()

    async def check(
        self, user_id: str, limit: Limit, request_id: str | None = None, client: Any = None
    ) -> Decision:
        """Admit and record one request of ``user_id`` for ``limit.action``, or refuse it.

        ``request_id`` (e.g. the request's Idempotency-Key) makes a retry of an admitted request be
        admitted again without taking a second place in the window; by default every call is new.

        Raises redis-py's errors (ConnectionError, TimeoutError, ...) unchanged: whether to fail open
        or closed is the caller's choice (see the module docstring). ``client``: the Redis client (by
        default) or the process's auto-pipeliner.
        """
        allowed, remaining, retry_after_ms = await self.store.rate_limit(
            user_id, limit.action, limit.window_ms, limit.limit, self.request_id(request_id), client
        )
        return decision(limit, bool(allowed), int(remaining), int(retry_after_ms))

    def request_id(self, request_id: str | None = None) -> str:
        """The member a request takes in the window: ``request_id`` (an Idempotency-Key, so that a
        retry takes no second place) or, by default, one new per call."""
        if request_id is None:
            return f"{self._prefix}:{next(self._counter)}"
        return f"k:{request_id}"  # never equal to a generated id

    def check_with(self, limit: Limit, request_id: str | None = None) -> tuple[str, int, int, str]:
        """The same check made by another script in the same call (``set_reaction.lua`` on a single
        Redis): its arguments for the store; the script answers ``refused(limit, retry_after_ms)``."""
        return (limit.action, limit.window_ms, limit.limit, self.request_id(request_id))


def decision(limit: Limit, allowed: bool, remaining: int, retry_after_ms: int) -> Decision:
    retry_after_s = 0 if allowed else max(1, math.ceil(retry_after_ms / 1000))
    return Decision(limit, allowed, remaining, retry_after_ms, retry_after_s)


def refused(limit: Limit, retry_after_ms: int) -> Decision:
    """The decision of a request the limit refused, ``retry_after_ms`` before one more is admitted."""
    return decision(limit, False, 0, retry_after_ms)


def refusal(decision: Decision) -> Refused:
    """The refusal of a refused decision (429), with ``Retry-After`` in whole seconds."""
    limit = decision.limit
    return Refused(
        "rate_limited",
        f"Too many {limit.action} requests: at most {limit.limit} per {_duration(limit.window_ms)}. "
        f"Retry in {decision.retry_after_s} s.",
        retry_after_s=decision.retry_after_s,
        action=limit.action,
    )


def _duration(ms: int) -> str:
    return f"{ms // 1000} s" if ms % 1000 == 0 else f"{ms} ms"


_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}
_ACTION = re.compile(r"[a-z][a-z0-9_]*")
_RULE = re.compile(r"(?P<limit>\d+)\s*/\s*(?P<amount>\d+)?\s*(?P<unit>ms|s|m|h)")


def parse_limits(text: str) -> dict[str, Limit]:
    """Parse ``"like=100/60s,comment=20/1m"`` into one Limit per action.

    Each part is ``<action>=<limit>/<window><unit>``: action in lower case (``[a-z][a-z0-9_]*``), limit
    an integer >= 1, window an integer > 0 (``/s`` means ``/1s``), unit one of ms, s, m, h. An empty
    string means no limits. Raises ValueError naming the bad part.
    """
    limits: dict[str, Limit] = {}
    if not text.strip():
        return limits
    for part in text.split(","):
        if not part.strip():
            raise ValueError(f"rate limits {text!r}: an empty part (a stray comma?)")
        action, sep, rule = (s.strip() for s in part.partition("="))
        if not sep:
            raise ValueError(
                f"rate limit {part.strip()!r}: expected <action>=<limit>/<window>, e.g. like=100/60s"
            )
        if not _ACTION.fullmatch(action):
            raise ValueError(f"rate limit {part.strip()!r}: action {action!r} is not [a-z][a-z0-9_]*")
        if action in limits:
            raise ValueError(f"rate limit {part.strip()!r}: action {action!r} is given twice")
        match = _RULE.fullmatch(rule)
        if match is None:
            raise ValueError(
                f"rate limit {part.strip()!r}: {rule!r} is not <limit>/<window> with a unit of ms, s, m "
                "or h, e.g. 100/60s"
            )
        limit = int(match["limit"])
        window_ms = int(match["amount"] or 1) * _UNITS_MS[match["unit"]]
        if limit < 1:
            raise ValueError(f"rate limit {part.strip()!r}: the limit must be at least 1")
        if window_ms < 1:
            raise ValueError(f"rate limit {part.strip()!r}: the window must be longer than 0")
        limits[action] = Limit(action, limit, window_ms)
    return limits


__all__ = ["Decision", "Limit", "RateLimiter", "parse_limits", "rate_limit_key", "refusal"]
