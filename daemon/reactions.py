"""Likes, dislikes and creator subscriptions: one script call each, through Redis, or straight to
Postgres while Redis is unreachable (daemon/fallback.py).

``set_reaction`` is one ``set_reaction.lua`` call that checks the Idempotency-Key, reads and writes the
user's state, enforces like/dislike exclusion and moves the counts, atomically in the item's slot;
``set_subscription`` the same in the creator's slot. Both answer ``{"status", "body"}`` with status
``changed``, ``unchanged`` or ``replayed``. Redis at maxmemory with only unflushed data is
``MemoryFull``; a cold key that could not be loaded from Postgres (Redis is up) is ``Unavailable``, not
a fallback write; a key used for another request is ``KeyReused``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from redis.exceptions import OutOfMemoryError

from daemon import fallback
from daemon.core import Core
from daemon.errors import REDIS_ERRORS, ColdLoadError, KeyReused, MemoryFull
from daemon.ids import STATE_NAMES, SUBSCRIPTION_STATES
from daemon.ratelimit import Limit, refusal, refused
from daemon.store.engagement import LimitCheck

# The store could not read a cold key from Postgres (Redis is up): 503, not a Postgres fallback write.
COLD_LOAD_ERRORS = (ColdLoadError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


async def _through_redis(
    core: Core, call: Awaitable[list[Any]], fallback_write: Callable[[], Awaitable[dict]], scope: str
) -> list[Any] | dict:
    """The script's answer, or (Redis unreachable) the fallback's whole answer, a dict."""
    try:
        answer = await call
    except OutOfMemoryError:
        core.metrics.redis_oom_refusals.labels(what="request").inc()
        raise MemoryFull(core.settings.buffer_retry_after_s) from None
    except COLD_LOAD_ERRORS:
        raise core.unavailable("Counts are temporarily unavailable.") from None
    except REDIS_ERRORS:
        # Redis unreachable: written straight to Postgres. A lost reply whose script did run is
        # harmless: the Postgres write wins and reconcile drops the pair's pending Redis state.
        return await fallback_write()
    if answer[0] == "conflict":
        raise KeyReused(scope)
    return answer


async def set_reaction(
    core: Core,
    content_id: str,
    user_id: str,
    action: str,
    key: str,
    client: Any = None,
    limit: tuple[Limit, LimitCheck] | None = None,
) -> dict:
    """``action`` (like, unlike, dislike, undislike) of ``user_id`` on ``content_id``; ``client``: the
    Redis client (default) or the process's auto-pipeliner. ``limit``: the user's rate limit, checked
    by the same script call (a single Redis; ``RateLimiter.check_with``): ``Refused`` (429) past it.
    Like a separate check, it fails open: with Redis unreachable the fallback writes, uncounted."""
    fell_back = False

    def fallback_write() -> Awaitable[dict]:
        nonlocal fell_back
        fell_back = True
        return fallback.set_reaction(core, content_id, user_id, action, key)

    answer = await _through_redis(
        core,
        core.store.set_reaction(
            content_id, user_id, action, key, client=client, limit=limit[1] if limit else None
        ),
        fallback_write,
        "item",
    )
    if limit is not None:
        if fell_back:
            core.metrics.rate_limit_errors.labels(action=limit[0].action).inc()
        elif answer[0] == "limited":
            core.metrics.rate_limited.labels(action=limit[0].action).inc()
            raise refusal(refused(limit[0], int(answer[1])))
    if isinstance(answer, dict):
        return answer
    status, state, likes, dislikes = answer
    return {
        "status": status,
        "body": {"state": STATE_NAMES[int(state)], "likes": int(likes), "dislikes": int(dislikes)},
    }


async def set_subscription(core: Core, creator: str, user_id: str, action: str, key: str) -> dict:
    """``action`` (subscribe, unsubscribe) of ``user_id`` on ``creator``."""
    answer = await _through_redis(
        core,
        core.store.set_subscription(creator, user_id, action, key),
        lambda: fallback.set_subscription(core, creator, user_id, action, key),
        "creator",
    )
    if isinstance(answer, dict):
        return answer
    status, state, subscribers = answer
    body = {"creator_id": creator, "state": SUBSCRIPTION_STATES[int(state)], "subscribers": int(subscribers)}
    return {"status": status, "body": body}
