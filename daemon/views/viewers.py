"""User ids waiting in the view buffer for the unique viewers HLLs (one per item, all time and per day).

The single-view path adds a user id to its item's set (one dict lookup and a set add, only for views
with a user). The bulk path appends the (content id, user id) columns of a batch to two lists, and
they are folded into per-item user ids only when the buffer is cut, like the bulk view ids. A drain
sends each item's distinct user ids once.

Memory is bounded by ``buffer_viewers_max_per_item`` distinct user ids per item per drain. An item
reaching it (or that many bulk user ids queued) makes the buffer drain early. Beyond it, until the
next cut, the views still count but the extra user ids of that item are not kept: they are counted
in ``dropped`` (``engagement_unique_viewers_dropped_total``). With Redis up a drain runs every
``buffer_flush_interval_ms``, so this needs more distinct viewers of one item than the cap within
one drain; while Redis is down the queue keeps at most the cap per item.
"""

from __future__ import annotations

from zlib import crc32

from daemon.views.drains import Viewers


class QueuedViewers:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._sets: dict[str, set[str]] = {}  # single views: content_id -> user ids
        self.bulk_ids: list[str] = []  # bulk views with a user id: content ids ...
        self._bulk_users: list[str] = []  # ... and their user ids, counted at the cut
        self.dropped = 0  # user ids not kept because their item was at the cap

    def add(self, content_id: str, user_id: str) -> bool:
        """Keep one view's user id. True when the item has just reached the cap: drain now (once, not
        on every later view, which would retry a Redis that is down at every request)."""
        users = self._sets.get(content_id)
        if users is None:
            self._sets[content_id] = {user_id}
            return self.cap == 1
        if len(users) < self.cap:
            users.add(user_id)
            return len(users) == self.cap
        if user_id not in users:
            self.dropped += 1
        return False

    def add_many(self, content_ids: list[str], user_ids: list[str]) -> bool:
        """Keep the user ids of a batch's views (two parallel lists). True when the queued bulk user
        ids have just reached the cap (together they could all be one item's): drain now."""
        before = len(self.bulk_ids)
        self.bulk_ids += content_ids
        self._bulk_users += user_ids
        return before < self.cap <= len(self.bulk_ids)

    def __bool__(self) -> bool:
        return bool(self._sets or self.bulk_ids)

    def take(self, shards: int) -> dict[int, Viewers]:
        """Swap the queue for an empty one (no await in between) and fold it into distinct user ids
        per item, at most ``cap`` each, grouped by shard (the crc32 of daemon.keys.shard_of, inlined:
        one pass over the pairs). An item's one user id is a plain string (most items of a cut have
        one, and a string is no container for the garbage collector to track), several a list."""
        sets, ids, users = self._sets, self.bulk_ids, self._bulk_users
        self._sets, self.bulk_ids, self._bulk_users = {}, [], []
        groups: list[Viewers] = [{} for _ in range(shards)]
        several: list[tuple[Viewers, str]] = []
        codes = map(crc32, map(str.encode, ids))  # (map runs in C)
        for content_id, user_id, code in zip(ids, users, codes, strict=True):
            group = groups[code % shards]
            found = group.get(content_id)
            if found is None:
                group[content_id] = user_id
            elif found.__class__ is str:
                group[content_id] = [found, user_id]  # type: ignore[list-item]
                several.append((group, content_id))
            else:
                found.append(user_id)  # type: ignore[union-attr]
        for group, content_id in several:
            group[content_id] = list(set(group[content_id]))
        for content_id, queued in sets.items():
            group = groups[crc32(content_id.encode()) % shards]
            found = group.get(content_id)
            if found is not None:
                queued.update([found] if found.__class__ is str else found)
            group[content_id] = list(queued)
            several.append((group, content_id))
        cap = self.cap
        for group, content_id in several:  # the others hold one user id
            found = group[content_id]
            if len(found) > cap:
                self.dropped += len(found) - cap
                del found[cap:]  # type: ignore[union-attr]
        return {shard: group for shard, group in enumerate(groups) if group}

    def compact(self) -> None:
        """Fold the bulk lists into the per-item sets (while Redis fails), capped."""
        if self.bulk_ids:
            self._sets = {
                c: {u} if u.__class__ is str else set(u)
                for group in self.take(1).values()
                for c, u in group.items()
            }
