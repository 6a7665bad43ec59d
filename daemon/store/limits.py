"""The rate limiter's script (daemon/ratelimit.py says what a limit is), on the user's key
``eng:{u:<user_id>}:rl:<action>``."""

from __future__ import annotations

from typing import Any

from daemon import keys
from daemon.store.base import StoreBase


class LimitsStore(StoreBase):
    async def rate_limit(
        self, user_id: str, action: str, window_ms: int, limit: int, request_id: str, client: Any = None
    ) -> list[Any]:
        """``rate_limit.lua``: admit and record ``request_id`` in the user's sliding window, or refuse
        it; [allowed, remaining, retry_after_ms]. ``client``: the Redis client or its auto-pipeliner."""
        return await self.scripts.rate_limit(
            client or self.redis, [keys.rate_limit_key(user_id, action)], [window_ms, limit, request_id]
        )
