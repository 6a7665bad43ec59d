"""Reads of counts and cold keys: ``read_counts`` for the stats endpoint, ``read_cold`` and ``seed_cold``
for a reader that loads what Redis lacks from Postgres itself."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daemon import keys
from daemon.store import cold
from daemon.store.base import StoreBase, checked


@dataclass(frozen=True, slots=True)
class ItemCounts:
    """What Redis holds about one item for GET .../stats: None where a key is missing (read Postgres)."""

    tokens: dict[str, str]  # load tokens of the missing counts and state keys (for ``Store.seed``)
    counts: dict[str, int] | None  # COUNTERS, and the flags "uva" / "uvd" when set
    unique_viewers: int | None
    unique_viewers_today: int | None
    state: int | None  # the viewer's like state, when asked for


class ReadStore(StoreBase):
    async def read_daily(self, content_id: str) -> tuple[str, list[Any], list[Any]]:
        """``read_daily.lua``: (the shard's captured batch id or "", [day, views, watch, ...] pending
        and not captured, [day, views, watch, ...] captured) of one item."""
        s = self._shard(content_id)
        script_keys = [
            keys.vdelta_key(s),
            keys.vbatch_key(s),
            keys.batch_id_key(s),
            keys.delta_key(s),
            keys.batch_key(s),
        ]
        batch_id, pending, captured = await self.scripts.read_daily(self.redis, script_keys, [content_id])
        return batch_id, pending, captured

    async def daily_viewers(self, content_id: str, days: Sequence[str]) -> dict[str, int]:
        """PFCOUNT of the item's daily unique viewers HLLs that Redis holds, by day (yyyymmdd)."""
        s = self._shard(content_id)
        pipe = self.redis.pipeline(transaction=False)
        for day in days:
            name = keys.uv_day_key(s, day, content_id)
            pipe.exists(name)
            pipe.pfcount(name)
        found = await pipe.execute()
        return {day: int(found[2 * i + 1]) for i, day in enumerate(days) if found[2 * i]}

    async def top_views(self, windows: Sequence[tuple[str, int]], limit: int) -> list[list[str]]:
        """``top_views.lua`` per shard, pipelined: ``windows`` is each shard's (newest trending bucket
        key, oldest bucket number); each answer [content_id, views, ...], at least the top ``limit``,
        most views first."""
        calls = [([newest], [limit, oldest]) for newest, oldest in windows]
        return [checked(r) for r in await self.scripts.top_views.call_many(self.redis, calls)]

    # -- reads ----------------------------------------------------------------------------------------

    async def read_items(
        self, content_ids: Sequence[str], user_id: str | None, day: str, client: Any = None
    ) -> list[ItemCounts]:
        """What Redis holds for each item (``read_counts.lua``; through ``client``, the api's
        auto-pipeliner, when given); missing keys as None. On one Redis one call reads every item; on
        Redis Cluster one call per shard involved (its slot), pipelined."""
        groups: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for content_id in content_ids:
            s = self._shard(content_id)
            groups[s if self.settings.redis_cluster else -1].append((s, content_id))
        user = user_id if user_id is not None else ""
        calls = []
        for items in groups.values():
            first = items[0][0]
            args: list[Any] = [day, user]
            for s, content_id in items:
                args += (keys.tag(s), content_id)
            calls.append(([keys.rec_key(first), keys.recexp_key(first)], args))
        script = self.scripts.read_counts
        if client is not None:
            results = await script.call_all(client, calls)
        else:
            results = await script.call_many(self.redis, calls)
        found: dict[str, ItemCounts] = {}
        for items, result in zip(groups.values(), results, strict=True):
            answer = checked(result)
            for k, (s, content_id) in enumerate(items):
                flat, all_time, today, state, counts_token, state_token = answer[6 * k : 6 * k + 6]
                tokens = {}
                if counts_token:
                    tokens[keys.counts_key(s, content_id)] = counts_token
                if state_token:
                    tokens[keys.like_key(s, content_id, user)] = state_token
                found[content_id] = ItemCounts(
                    tokens,
                    {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)} if flat else None,
                    None if all_time < 0 else all_time,
                    None if today < 0 else today,
                    None if state == "" else int(state),
                )
        return [found[c] for c in content_ids]

    async def read(self, names: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
        """Cold keys of one shard (hashes as dicts, strings as str): (the present ones' values, the
        missing ones' load tokens, for ``seed``)."""
        shard = int(names[0][names[0].index("{s:") + 3 : names[0].index("}")])
        kinds = ["h" if cold.parse(n)[0] in ("c", "cr") else "s" for n in names]
        result = await self.scripts.read_cold(
            self.redis, [keys.rec_key(shard), keys.recexp_key(shard), *names], kinds
        )
        values: dict[str, Any] = {}
        tokens: dict[str, str] = {}
        for i, name in enumerate(names):
            found, value = result[2 * i], result[2 * i + 1]
            if int(found):
                values[name] = dict(zip(value[::2], value[1::2], strict=True)) if kinds[i] == "h" else value
            else:
                tokens[name] = value
        return values, tokens

    async def seed(
        self, tokens: dict[str, str], values: dict[str, Any], ttls: dict[str, int] | None = None
    ) -> None:
        """Create missing cold keys from values a reader got from Postgres, with the load tokens the
        read left (``ItemCounts.tokens``). Best effort: a refused seed (another load seeded the key
        meanwhile, or Redis at maxmemory) only means the next read loads again."""
        by_shard: dict[int, dict[str, Any]] = defaultdict(dict)
        for name, value in values.items():
            if name in tokens:
                by_shard[int(name[name.index("{s:") + 3 : name.index("}")])][name] = value
        calls = [
            ([keys.rec_key(s), keys.recexp_key(s)], [self.loader.pack(tokens, group, ttls)])
            for s, group in by_shard.items()
        ]
        if calls:
            await self.scripts.seed_cold.call_many(self.redis, calls)
