"""Redis key layout 1 -> 2 (``engagementd migrate``), and layout-1 view drains journaled by a consumer.

Layout 1 kept every item's counts in one ``eng:{s:N}:live`` hash per shard, like states and
subscriptions in ``state`` / ``subs`` hashes, the registry copy in a ``registry`` hash, and records
(Idempotency-Key answers, drain markers) as keys with a TTL. Layout 2 keeps them as cold keys, one per
item, creator or pair (docs/redis-memory.md). The upgrade copies every field to its key, lists the
keys in the shard's dirty set (so the next flush gives them their idle TTL once Postgres has all of
them), marks the all-time viewers HLLs touched (so the flusher writes their contents to Postgres), and
deletes the old hashes. Pending deltas, drains, batches and the flush ledger keep their format.

Run it with every api, consumer and flusher of the old version stopped: it is idempotent, so an
interrupted run is run again. Records of layout 1 are left to expire (their TTLs are at most a day):
an Idempotency-Key first used before the upgrade is not recognised after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from daemon import keys
from daemon.store import Store
from daemon.views.drains import drain_keys

log = logging.getLogger(__name__)

_EMPTY_MAP = b"\x80"  # msgpack {}
_SCAN = 1000


def _old(shard: int, name: str) -> str:
    return f"{keys.PREFIX}:{{s:{shard}}}:{name}"


async def upgrade(redis: Any, shards: int, counts_ttl_s: int) -> dict[str, int]:
    """Convert layout-1 data to layout 2; returns what was copied. Sets the layout to 2."""
    if int(await redis.get(keys.LAYOUT_KEY) or 0) == keys.LAYOUT:
        return {}
    if await redis.get(keys.SHARDS_KEY) is None:  # nothing written yet
        await redis.set(keys.LAYOUT_KEY, keys.LAYOUT)
        return {}
    moved = {"counts": 0, "states": 0, "subscriptions": 0, "registry": 0, "viewers": 0}
    for shard in range(shards):
        moved["counts"] += await _hash(redis, _old(shard, "live"), lambda f, v, s=shard: _count(s, f, v))
        moved["states"] += await _hash(
            redis, _old(shard, "state"), lambda f, v, s=shard: _pair(s, keys.like_key, f, v)
        )
        moved["subscriptions"] += await _hash(
            redis, _old(shard, "subs"), lambda f, v, s=shard: _pair(s, keys.subscription_key, f, v)
        )
        moved["registry"] += await _registry(redis, shard, counts_ttl_s)
    moved["viewers"] = await _viewers(redis)
    await redis.set(keys.LAYOUT_KEY, keys.LAYOUT)
    log.info("Redis key layout upgraded to %d: %s", keys.LAYOUT, moved)
    return moved


def _count(shard: int, field: str, value: str) -> tuple[str, str, str]:
    counter, target = keys.parse_delta_field(field)
    if counter in keys.CREATOR_COUNTERS:
        return keys.creator_key(shard, target), counter, value
    return keys.counts_key(shard, target), counter, value


def _pair(shard: int, key_of: Any, field: str, value: str) -> tuple[str, str, str]:
    target, _, user = field.partition("|")
    return key_of(shard, target, user), "", value


async def _move(redis: Any, name: str, write: Callable[[Any, str, str], None]) -> int:
    """Copy a layout-1 hash field by field (``write(pipe, field, value)`` queues the new key's writes),
    then delete it; the number of fields."""
    copied, cursor = 0, 0
    while True:
        cursor, fields = await redis.hscan(name, cursor, count=_SCAN)
        if fields:
            pipe = redis.pipeline(transaction=False)
            for field, value in fields.items():
                write(pipe, field, value)
            await pipe.execute()
            copied += len(fields)
        if not int(cursor):
            break
    await redis.delete(name)
    return copied


async def _hash(redis: Any, name: str, convert: Any) -> int:
    """Counts become hash fields, states strings; each new key is listed as changed (no TTL until the
    next flush)."""

    def write(pipe: Any, field: str, value: str) -> None:
        key, hash_field, new_value = convert(field, value)
        if hash_field:
            pipe.hset(key, hash_field, new_value)
        else:
            pipe.set(key, new_value)
        pipe.sadd(key[: key.index("}:") + 1] + ":dirty", key)

    return await _move(redis, name, write)


async def _registry(redis: Any, shard: int, ttl_s: int) -> int:
    def write(pipe: Any, content_id: str, value: str) -> None:
        pipe.set(keys.registry_key(shard, content_id), value, ex=ttl_s)

    return await _move(redis, _old(shard, "registry"), write)


async def _viewers(redis: Any) -> int:
    """All-time HLLs of layout 1 had no TTL and no copy in Postgres: touched, the flusher writes them."""
    touched = 0
    async for name in redis.scan_iter(match=f"{keys.PREFIX}:{{s:*}}:uv:*", count=_SCAN):
        tag, _, content_id = name.partition("}:uv:")
        await redis.sadd(tag + "}:uvatouch", content_id)
        touched += 1
    return touched


async def journaled_calls(store: Store, calls: Sequence[Any]) -> list[Any]:
    """The ``apply_views`` calls of a consumer journal, layout-1 entries converted: a layout-1 drain
    whose marker key exists was applied and is dropped; the others become layout-2 calls under a
    process named after their drain id."""
    old = [c for c in calls if len(c[0]) <= 5 and ":drain:" in str(c[0][2])]
    if not old:
        return list(calls)
    pipe = store.redis.pipeline(transaction=False)
    for call_keys, _ in old:
        pipe.exists(call_keys[2])
    applied = {id(c) for c, done in zip(old, await pipe.execute(), strict=True) if done}
    out = []
    for call in calls:
        if id(call) in applied:
            continue
        out.append(_converted(store, call) if any(call is c for c in old) else call)
    return out


def _converted(store: Store, call: Any) -> Any:
    call_keys, args = call
    marker = str(call_keys[2])
    shard = int(marker[marker.index("{s:") + 3 : marker.index("}")])
    drain_id = marker[marker.index(":drain:") + 7 :]
    settings = store.settings
    views, watch = args[1], args[2]
    signals = args[3] if len(args) > 3 else _EMPTY_MAP
    viewers = args[4] if len(args) > 4 else _EMPTY_MAP
    day = args[6] if len(args) > 6 else keys.uv_day(settings.unique_viewers_day)
    new_keys = drain_keys(shard)
    new_args = [
        f"v1:{drain_id}",
        "1",
        views,
        watch,
        signals,
        viewers,
        keys.tag(shard),
        day,
        settings.view_delta_max_drains,
        settings.drain_marker_ttl_s,
    ]
    return [new_keys, new_args]
