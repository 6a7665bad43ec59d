"""Trending: the items with the most views over a sliding window (docs/api.md).

``apply_views.lua`` adds each drain's views to two ZSETs of the drain's shard: its 5-minute bucket
(``tr:<epoch s // 300>``, TTL 2 h) and its hour (``trh:<bucket // 12>``, TTL 8 days). No extra round
trip on the view path, and no single hot key: every shard has its own buckets. A read runs
``top_views.lua`` on every shard in one pipelined round trip (the union of the window's buckets, the top
items of that shard) and merges: an item lives in one shard, so the merged top is exact.

Windows: ``1h`` is the last 12 five-minute buckets (the current one included): 55 to 60 minutes; ``24h``
and ``7d`` the last 24 and 168 hours (the current one included). The bucket of a view is the time its
api process (or consumer batch) cut it into a drain. An api process reuses an answer for
``ENGAGEMENT_TRENDING_CACHE_MS``.
"""

from __future__ import annotations

import time

from daemon import keys
from daemon.core import Core

# window -> (bucket keys of a shard at the current 5-minute bucket)
WINDOWS = {"1h": (12, False), "24h": (24, True), "7d": (168, True)}
TRENDING_MAX = 100


def window_of(shard: int, window: str, bucket: int) -> tuple[str, int]:
    """``window`` of ``shard`` at the 5-minute ``bucket``: its newest trending bucket key and its oldest
    bucket number (top_views.lua derives the keys between)."""
    n, hourly = WINDOWS[window]
    if hourly:
        hour = bucket // keys.TREND_HOUR_BUCKETS
        return keys.trend_hour_key(shard, hour), hour - n + 1
    return keys.trend_key(shard, bucket), bucket - n + 1


class Trending:
    """Reads trending windows, each answer reused for ``trending_cache_ms``."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._cache: dict[tuple[str, int], tuple[float, list[dict[str, object]]]] = {}

    async def top(self, window: str, limit: int) -> list[dict[str, object]]:
        """``[{"content_id", "views"}]``, most views first (ties: by content id), at most ``limit``."""
        settings = self.core.settings
        now = time.monotonic()
        cached = self._cache.get((window, limit))
        if cached is not None and cached[0] > now:
            return cached[1]
        bucket = keys.trend_bucket(settings.trending_clock_s)
        windows = [window_of(shard, window, bucket) for shard in range(settings.shards)]
        found: list[tuple[str, int]] = []
        for answer in await self.core.store.top_views(windows, limit):
            found += ((answer[i], int(float(answer[i + 1]))) for i in range(0, len(answer), 2))
        found.sort(key=lambda item: (-item[1], item[0]))
        items: list[dict[str, object]] = [{"content_id": c, "views": n} for c, n in found[:limit] if n > 0]
        if settings.trending_cache_ms:
            self._cache[(window, limit)] = (now + settings.trending_cache_ms / 1000, items)
        return items
