"""The store: the scripts that read or change cold keys (docs/redis-memory.md), each behind a method that
builds its KEYS and ARGV in one place and loads missing cold keys from Postgres (daemon/store/cold.py).

Callers pass what the operation is about (an item, a user, an action); they never see a key. ``client``
is the Redis client or, on the api's hot paths, its auto-pipeliner (daemon/pipeliner.py).
"""

from __future__ import annotations

from daemon.store.base import StoreBase, all_checked, by_shard, checked
from daemon.store.engagement import EngagementStore
from daemon.store.flush import FlushStore
from daemon.store.history import HistoryStore
from daemon.store.limits import LimitsStore
from daemon.store.offsets import OffsetsStore
from daemon.store.reads import ItemCounts, ReadStore
from daemon.store.repair import RepairStore


class Store(EngagementStore, ReadStore, FlushStore, RepairStore, HistoryStore, OffsetsStore, LimitsStore):
    """Every script of ``lua/`` behind one method each (see the parts' modules)."""


__all__ = ["ItemCounts", "Store", "StoreBase", "all_checked", "by_shard", "checked"]
