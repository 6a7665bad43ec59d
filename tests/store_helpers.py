"""A store on a bare Redis client, for tests of what needs no Postgres (rate limits, the pipeliner)."""

from __future__ import annotations

from typing import Any

from daemon import db
from daemon.metrics import Metrics
from daemon.ratelimit import RateLimiter
from daemon.settings import Settings
from daemon.store import Store
from lua import Scripts


def store_on(client: Any, settings: Settings | None = None) -> Store:
    settings = settings or Settings()
    return Store(settings, client, Scripts.load(), db.LazyPool(settings), Metrics())


def limiter_on(client: Any) -> RateLimiter:
    """A rate limiter whose script calls go to ``client`` (a Redis client, a cluster client or a
    pipeliner, as the like endpoints pass theirs)."""
    return RateLimiter(store_on(client))
