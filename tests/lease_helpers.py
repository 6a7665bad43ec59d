"""Flush leases as the scripts see them: ``"<owner>|<expiry ms>"`` without a Redis TTL (lua/lib/lease.lua),
held until Redis's clock passes the expiry. An expired lease may stay in Redis as a key: it is free."""

from __future__ import annotations

from typing import Any

import redis


def _expiry_ms(value: Any) -> int:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return int(text.rsplit("|", 1)[1])


def _now_ms(time: tuple[int, int]) -> int:
    seconds, micros = time
    return int(seconds) * 1000 + int(micros) // 1000


async def held_leases(client: Any) -> int:
    """Shard leases some flusher still holds (not expired by Redis's clock), on an asyncio client."""
    now = _now_ms(await client.time())
    held = 0
    async for name in client.scan_iter(match="eng:*:lease"):
        value = await client.get(name)
        if value is not None and _expiry_ms(value) > now:
            held += 1
    return held


def held_leases_sync(redis_url: str) -> int:
    """``held_leases`` on a Redis given by its URL (from a test's own thread)."""
    with redis.Redis.from_url(redis_url) as client:
        now = _now_ms(client.time())
        values = [client.get(name) for name in client.scan_iter(match="eng:*:lease")]
    return sum(1 for v in values if v is not None and _expiry_ms(v) > now)
