"""User ids waiting in the view buffer for the unique viewers HLLs (one per item, all time and per day).

The single-view path adds a user id to its item's set (one dict lookup and a set add, only for views
with a user). The bulk path appends the (content id, user id) columns of a batch to two lists, and
they are folded into per-item user ids only when the buffer is cut, like the bulk view ids. A drain
sends each item's distinct user ids once.

Memory is bounded by ``buffer_viewers_max_per_item`` distinct user ids per item per drain. An item
reaching it makes the buffer drain early. Beyond it, until the next cut, the views still count but
the extra user ids of that item are not kept: they are counted in ``dropped``
(``engagement_unique_viewers_dropped_total``). With Redis up a drain runs every
``buffer_flush_interval_ms``, so this needs more distinct viewers of one item than the cap within one
drain; while Redis is down the queue keeps at most the cap per item.
"""

from __future__ import annotations


class QueuedViewers:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._sets: dict[str, set[str]] = {}  # single views: content_id -> user ids
        self.bulk_ids: list[str] = []  # bulk views with a user id: content ids ...
        self._bulk_users: list[str] = []  # ... and their user ids, counted at the cut
        self.dropped = 0  # user ids not kept because their item was at the cap

    def add(self, content_id: str, user_id: str) -> bool:
        """Keep one view's user id. True when the item is at the cap: the buffer should drain now."""
        users = self._sets.get(content_id)
        if users is None:
            self._sets[content_id] = {user_id}
            return self.cap <= 1
        if len(users) < self.cap:
            users.add(user_id)
            return len(users) >= self.cap
        if user_id not in users:
            self.dropped += 1
        return True

    def add_many(self, content_ids: list[str], user_ids: list[str]) -> bool:
        """Keep the user ids of a batch's views (two parallel lists). True: drain now."""
        self.bulk_ids += content_ids
        self._bulk_users += user_ids
        return len(self.bulk_ids) >= self.cap

    def __bool__(self) -> bool:
        return bool(self._sets or self.bulk_ids)

    def pairs(self) -> int:
        """User ids queued (an upper bound of the distinct ones: bulk ids are not deduplicated yet)."""
        return sum(map(len, self._sets.values())) + len(self.bulk_ids)

    def take(self) -> dict[str, list[str]]:
        """Swap the queue for an empty one (no await in between) and fold it into distinct user ids
        per item, at most ``cap`` each."""
        sets, ids, users = self._sets, self.bulk_ids, self._bulk_users
        self._sets, self.bulk_ids, self._bulk_users = {}, [], []
        folded: dict[str, list[str]] = {c: list(u) for c, u in sets.items()}
        if ids:
            # distinct (item, user) pairs in C, then grouped per item
            for content_id, user_id in set(zip(ids, users, strict=True)):
                found = folded.get(content_id)
                if found is None:
                    folded[content_id] = [user_id]
                elif content_id in sets:  # the item also has single views: dedupe against them
                    if user_id not in sets[content_id]:
                        sets[content_id].add(user_id)
                        found.append(user_id)
                else:
                    found.append(user_id)
        cap = self.cap
        for found in folded.values():
            if len(found) > cap:
                self.dropped += len(found) - cap
                del found[cap:]
        return folded

    def compact(self) -> None:
        """Fold the bulk lists into the per-item sets (while Redis fails), capped."""
        if self.bulk_ids:
            self._sets = {c: set(u) for c, u in self.take().items()}
