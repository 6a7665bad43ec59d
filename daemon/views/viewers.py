"""User ids waiting in the view buffer for the unique viewers HLLs (one per item, all time and per day).

The single-view path adds a user id to its item's set (one dict lookup and a set add, only for views
with a user). The bulk path appends the (content id, user id) columns of a batch to two lists, and
they are folded into per-item user ids only when the buffer is cut, like the bulk view ids. A drain
sends each item's user ids (a repeat within one cut too: PFADD ignores it).

Memory is bounded by ``buffer_viewers_max_per_item`` distinct user ids per item per drain. An item
reaching it (or that many bulk user ids queued) makes the buffer drain early. Beyond it, until the
next cut, the views still count but the extra user ids of that item are not kept: they are counted
in ``dropped`` (``engagement_unique_viewers_dropped_total``). With Redis up a drain runs every
``buffer_flush_interval_ms``, so this needs more distinct viewers of one item than the cap within
one drain; while Redis is down the queue keeps at most the cap per item.
"""

from __future__ import annotations

from collections import defaultdict, deque
from zlib import crc32

from daemon.views.drains import Viewers


class QueuedViewers:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._sets: dict[str, set[str]] = {}  # single views: content_id -> user ids
        self.bulk_ids: list[str] = []  # bulk views with a user id: content ids ...
        self._bulk_users: list[str] = []  # ... and their user ids, counted at the cut
        # Bulk views of batches where every view has a user id: the views are counted here, not in the
        # buffer's bulk ids (one grouping by item serves both): content ids and user ids ...
        self.counted_ids: list[str] = []
        self._counted_users: list[str] = []
        # ... grouped by item by take_views(), until take()
        self._grouped: defaultdict[str, list[str]] | None = None
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

    def add_counted(self, content_ids: list[str], user_ids: list[str]) -> bool:
        """``add_many`` for a batch whose every view has a user id: the views themselves are counted
        here too (``take_views``), and the buffer does not list them."""
        before = len(self.bulk_ids) + len(self.counted_ids)
        self.counted_ids += content_ids
        self._counted_users += user_ids
        return before < self.cap <= before + len(content_ids)

    @property
    def counted(self) -> int:
        """Views queued here (``add_counted``) and not yet taken by ``take_views``."""
        return len(self.counted_ids)

    def take_views(self) -> dict[str, int]:
        """The views of the ``add_counted`` pairs, per item; the pairs stay, grouped by item, for the
        next ``take`` or ``compact``. Called by the buffer whenever it takes its own queued views."""
        ids, users = self.counted_ids, self._counted_users
        if len(ids) != len(users):
            raise AssertionError("counted content ids and user ids out of step")
        if not ids:
            return {}
        self.counted_ids, self._counted_users = [], []
        fresh = _group_pairs(ids, users, defaultdict(list))
        views = {content_id: len(found) for content_id, found in fresh.items()}
        if self._grouped is None:
            self._grouped = fresh
        else:
            for content_id, found in fresh.items():
                self._grouped[content_id] += found
        return views

    def __bool__(self) -> bool:
        return bool(self._sets or self.bulk_ids or self.counted_ids or self._grouped)

    def take(self, shards: int) -> dict[int, Viewers]:
        """Swap the queue for an empty one (no await in between) and fold it into the user ids of each
        item, at most ``cap`` distinct ones, grouped by shard. The pairs are grouped by item in C
        (``_group_pairs``); the shard (the crc32 of daemon.keys.shard_of,
        inlined) is found per item. A user id that viewed an item twice in one cut is sent twice: PFADD
        ignores the repeat, and finding repeats (a set per item) cost more than they save unless the
        item has more than ``cap`` user ids, where they are dropped before the cap applies. An item's
        one user id is a plain string (most items of a cut have one, and a string is no container for
        the garbage collector to track), several a list."""
        if self.counted_ids:  # their views would be lost
            raise AssertionError("take() before take_views()")
        if len(self.bulk_ids) != len(self._bulk_users):
            raise AssertionError("bulk content ids and user ids out of step")
        sets, ids, users = self._sets, self.bulk_ids, self._bulk_users
        self._sets, self.bulk_ids, self._bulk_users = {}, [], []
        by_item = _group_pairs(ids, users, self._grouped if self._grouped is not None else defaultdict(list))
        self._grouped = None
        for content_id, queued in sets.items():
            by_item[content_id].extend(queued)
        groups: list[Viewers] = [{} for _ in range(shards)]
        cap = self.cap
        for content_id, found in by_item.items():
            group = groups[crc32(content_id.encode()) % shards]
            if len(found) == 1:
                group[content_id] = found[0]
                continue
            if len(found) > cap:
                found = list(set(found))
                if len(found) > cap:
                    self.dropped += len(found) - cap
                    del found[cap:]
            group[content_id] = found[0] if len(found) == 1 else found
        return {shard: group for shard, group in enumerate(groups) if group}

    def compact(self) -> None:
        """Fold the bulk lists into the per-item sets (while Redis fails), capped. The buffer takes
        the counted views (``take_views``) first."""
        if self.bulk_ids or self._grouped:
            self._sets = {
                c: {u} if u.__class__ is str else set(u)
                for group in self.take(1).values()
                for c, u in group.items()
            }


def _group_pairs(
    ids: list[str], users: list[str], into: defaultdict[str, list[str]]
) -> defaultdict[str, list[str]]:
    """``into`` with each user id appended to its content id's list, without a Python step per pair
    (``map`` over the defaultdict's ``__getitem__`` finds each pair's list, ``map`` over ``list.append``
    fills them, both in C)."""
    deque(map(list.append, map(into.__getitem__, ids), users), maxlen=0)
    return into
