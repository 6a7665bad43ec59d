"""Writes of engagement: likes and dislikes, subscriptions, shares, comment counts, view drains, the
GDPR purge's clears, and the records (Idempotency-Key answers, markers) they keep.

Each method is one script (``lua/<name>.lua``) whose KEYS and ARGV are built here and nowhere else; a
script that finds a cold key missing answers "unknown" and ``daemon/store/cold.py`` loads it from
Postgres and calls again. ``client``: the Redis client or, on the api's hot paths, its auto-pipeliner.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from daemon import keys
from daemon.store import cold
from daemon.store.base import StoreBase, by_shard, checked

_CHUNK = 500  # items per purge script call
_LIKE = {"counts": 1, "like": 1}
_SUBSCRIPTION = {"creator": 1, "subscription": 1}
_COUNTS = {"counts": 1}


# (the rate limit's action, window ms, requests admitted per window, request id): daemon/ratelimit.py
LimitCheck = tuple[str, int, int, str]


class EngagementStore(StoreBase):
    # -- likes and dislikes ---------------------------------------------------------------------------

    def _pair_call(self, kind: str, target: str, user_id: str, action: str, key: str) -> cold.Call:
        """KEYS and ARGV of ``set_reaction`` (kind "like") or ``set_subscription`` ("subscription"):
        the target's counts, the pair's state, the deltas, the records, the dirty set."""
        s = self._shard(target)
        if kind == "like":
            counts, state, pending = (
                keys.counts_key(s, target),
                keys.like_key(s, target, user_id),
                keys.sdelta_key(s),
            )
            record = keys.like_record(target, user_id, key) if key else ""
        else:
            counts, state = keys.creator_key(s, target), keys.subscription_key(s, target, user_id)
            pending, record = (
                keys.subdelta_key(s),
                keys.subscription_record(target, user_id, key) if key else "",
            )
        return (
            [
                counts,
                state,
                keys.delta_key(s),
                pending,
                keys.rec_key(s),
                keys.recexp_key(s),
                keys.dirty_key(s),
            ],
            [target, user_id, action, self.settings.idempotency_ttl_s, action if key else "", record],
        )

    def _reaction(
        self, content_id: str, user_id: str, action: str, key: str, limit: LimitCheck | None = None
    ) -> cold.Call:
        script_keys, args = self._pair_call("like", content_id, user_id, action, key)
        if limit is None:
            return script_keys, [*args, ""]
        limit_action, window_ms, most, request_id = limit
        return (
            [*script_keys, keys.rate_limit_key(user_id, limit_action)],
            [*args, f"{window_ms} {most} {request_id}"],
        )

    async def set_reaction(
        self,
        content_id: str,
        user_id: str,
        action: str,
        key: str,
        client: Any = None,
        limit: LimitCheck | None = None,
    ) -> list[Any]:
        """``set_reaction.lua``'s answer: [status, state, likes, dislikes], or ["limited",
        retry_after_ms] when ``limit`` (a single Redis only: its key is in the user's slot) refused the
        request, in the same call."""
        script_keys, args = self._reaction(content_id, user_id, action, key, limit)
        return await cold.call(
            self.scripts.set_reaction, client or self.redis, script_keys, args, self.loader, _LIKE
        )

    async def set_reactions(self, calls: Sequence[tuple[str, str, str, str]]) -> list[Any]:
        """Many ``set_reaction`` calls (content_id, user_id, action, key), pipelined; an error in place
        of each call that failed."""
        built = [self._reaction(*c) for c in calls]
        return await cold.call_many(
            self.scripts.set_reaction, self.redis, built, self.loader, [_LIKE] * len(built)
        )

    # -- subscriptions --------------------------------------------------------------------------------

    async def set_subscription(self, creator_id: str, user_id: str, action: str, key: str) -> list[Any]:
        """``set_subscription.lua``'s answer: [status, state, subscribers]."""
        script_keys, args = self._pair_call("subscription", creator_id, user_id, action, key)
        return await cold.call(
            self.scripts.set_subscription, self.redis, script_keys, args, self.loader, _SUBSCRIPTION
        )

    # -- shares ---------------------------------------------------------------------------------------

    async def add_share(
        self,
        content_id: str,
        user_id: str,
        key: str,
        fingerprint: str,
        share_id: int,
        mode: str,
        conn: asyncpg.Connection | None = None,
    ) -> list[Any]:
        """``add_share.lua``'s answer: [status, share_id, shares]; ``mode`` add or undo. ``conn``: the
        caller's connection, in the transaction of the share's row (a cold load reads on it)."""
        s = self._shard(content_id)
        script_keys = [
            keys.counts_key(s, content_id),
            keys.delta_key(s),
            keys.rec_key(s),
            keys.recexp_key(s),
            keys.dirty_key(s),
        ]
        record = keys.share_record(content_id, user_id, key) if key else ""
        args = [content_id, self.settings.idempotency_ttl_s, fingerprint, share_id, mode, record]
        return await cold.call(
            self.scripts.add_share, self.redis, script_keys, args, self.loader, _COUNTS, conn
        )

    # -- comment counts -------------------------------------------------------------------------------

    def _comments(self, shard: int, mode: str, changes: Sequence[tuple[str, int, int]]) -> cold.Call:
        args: list[Any] = [mode, self.settings.drain_marker_ttl_s, keys.tag(shard)]
        for content_id, comment_id, amount in changes:
            args += (content_id, amount, keys.comment_mark(comment_id, amount > 0))
        script_keys = [
            keys.delta_key(shard),
            keys.rec_key(shard),
            keys.recexp_key(shard),
            keys.dirty_key(shard),
        ]
        return script_keys, args

    async def count_comments(
        self, changes: Sequence[tuple[str, int, int]], conn: asyncpg.Connection | None = None
    ) -> int:
        """Apply comment count changes (content_id, comment_id, +1 counted | -1 uncounted), each once
        (a marker per change); returns how many were applied now. ``conn``: the caller's connection,
        which holds the rows' locks (a cold load reads on it)."""
        groups = by_shard(changes, self.settings.shards)
        calls = [self._comments(s, "apply", c) for s, c in groups.items()]
        needed = [{"counts": len({c[0] for c in group})} for group in groups.values()]
        results = await cold.call_many(
            self.scripts.count_comments, self.redis, calls, self.loader, needed, conn=conn
        )
        return sum(int(checked(r)) for r in results)

    async def forget_comment_marks(self, changes: Sequence[tuple[str, int, int]]) -> None:
        """Drop the markers of applied changes, once Postgres has the rows' flags."""
        calls = [self._comments(s, "forget", c) for s, c in by_shard(changes, self.settings.shards).items()]
        for result in await self.scripts.count_comments.call_many(
            self.redis, [(k, [*a, ""]) for k, a in calls]
        ):
            checked(result)

    # -- the GDPR purge -------------------------------------------------------------------------------

    async def clear_reactions(self, user_id: str, content_ids: Sequence[str]) -> tuple[int, int]:
        """Take back the user's likes and dislikes on these items; (likes, dislikes) removed."""
        results = await self._clear(
            self.scripts.clear_reactions, keys.sdelta_key, user_id, content_ids, "like"
        )
        return sum(int(r[0]) for r in results), sum(int(r[1]) for r in results)

    async def clear_subscriptions(self, user_id: str, creator_ids: Sequence[str]) -> int:
        """Take back the user's subscriptions to these creators; the number removed."""
        results = await self._clear(
            self.scripts.clear_subscriptions, keys.subdelta_key, user_id, creator_ids, "subscription"
        )
        return sum(int(r) for r in results)

    async def forget_pairs(self, user_id: str, content_ids: Sequence[str], creator_ids: Sequence[str]) -> int:
        """After the purge deleted the user's rows in Postgres: drop the user's state keys and pending
        0s that only repeat it (``forget_pairs.lua``); returns the keys deleted."""
        groups: dict[int, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
        for content_id in sorted(set(content_ids)):
            groups[self._shard(content_id)][0].append(content_id)
        for creator_id in sorted(set(creator_ids)):
            groups[self._shard(creator_id)][1].append(creator_id)
        calls = [
            (
                [
                    keys.sdelta_key(s),
                    keys.sbatch_key(s),
                    keys.subdelta_key(s),
                    keys.subbatch_key(s),
                    keys.dirty_key(s),
                ],
                [user_id, keys.tag(s), len(items), *items, *creators],
            )
            for s, (items, creators) in groups.items()
        ]
        if not calls:
            return 0
        return sum(int(checked(r)) for r in await self.scripts.forget_pairs.call_many(self.redis, calls))

    async def _clear(
        self, script: Any, pending: Callable[[int], str], user_id: str, targets: Sequence[str], kind: str
    ) -> list[Any]:
        calls: list[cold.Call] = []
        needed: list[cold.Needed] = []
        counts = "counts" if kind == "like" else "creator"
        for shard, ids in by_shard([(t,) for t in sorted(set(targets))], self.settings.shards).items():
            for start in range(0, len(ids), _CHUNK):
                chunk = [t for (t,) in ids[start : start + _CHUNK]]
                script_keys = [
                    keys.delta_key(shard),
                    pending(shard),
                    keys.dirty_key(shard),
                    keys.rec_key(shard),
                    keys.recexp_key(shard),
                ]
                calls.append((script_keys, [user_id, keys.tag(shard), *chunk]))
                needed.append({counts: len(chunk), kind: len(chunk)})
        if not calls:
            return []
        return [checked(r) for r in await cold.call_many(script, self.redis, calls, self.loader, needed)]

    # -- view drains ----------------------------------------------------------------------------------

    async def apply_drains(self, calls: Sequence[cold.Call], needed: Sequence[cold.Needed]) -> list[Any]:
        """``apply_views`` calls (``Drain.call``), pipelined: 1 applied, 0 applied before, or an error in
        place of each call that failed (it is retried as is: its mark makes it count once)."""
        return await cold.call_many(self.scripts.apply_views, self.redis, calls, self.loader, needed)

    async def forget_drain_marks(self, marks: Sequence[tuple[int, str]]) -> None:
        """Drop drain marks (shard, process) nobody will retry (a consumer batch that was finished)."""
        if not marks:
            return
        pipe = self.redis.pipeline(transaction=False)
        for shard, process in marks:
            name = f"d:{process}"
            pipe.hdel(keys.rec_key(shard), name)
            pipe.zrem(keys.recexp_key(shard), name)
        await pipe.execute()

    # -- records --------------------------------------------------------------------------------------

    async def claim(
        self, shard: int, record: str, mode: str, fingerprint: str, answer: str, client: Any = None
    ) -> list[Any]:
        """``claim_idempotency.lua``'s answer [status, answer] for a record of the shard's records."""
        return await self.scripts.claim_idempotency(
            client or self.redis,
            [keys.rec_key(shard), keys.recexp_key(shard)],
            [mode, fingerprint, answer, self.settings.idempotency_ttl_s, record],
        )

    async def sweep_records(self) -> int:
        """Remove every expired record (Idempotency-Key answers, comment markers, drain marks of silent
        processes) of every shard; returns how many."""
        shards = list(range(self.settings.shards))
        removed = 0
        while shards:
            calls = [
                ([keys.rec_key(s), keys.recexp_key(s)], [self.settings.records_sweep_max]) for s in shards
            ]
            results = await self.scripts.sweep_records.call_many(self.redis, calls)
            removed += sum(int(checked(r)[0]) for r in results)
            shards = [s for s, r in zip(shards, results, strict=True) if int(r[1])]
        return removed
