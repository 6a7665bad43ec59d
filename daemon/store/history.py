"""Watch history's scripts: a heartbeat (``record_history``) and a user's clear (``clear_history``), in
the user's shard (daemon/history.py says what an entry is)."""

from __future__ import annotations

from typing import Any

from daemon import keys
from daemon.store.base import StoreBase


class HistoryStore(StoreBase):
    async def record_history(self, user_id: str, content_id: str, value: str) -> str:
        """``record_history.lua``: store ``<pct>|<pos>`` as the user's entry for the item, stamped with
        Redis' clock; returns the stored ``<ts_us>|<pct>|<pos>``."""
        shard = self._shard(user_id)
        return await self.scripts.record_history(
            self.redis,
            [keys.history_key(shard, user_id), keys.hdelta_key(shard)],
            [content_id, user_id, value],
        )

    async def clear_history(self, user_id: str) -> list[Any]:
        """``clear_history.lua``: drop the user's entries and pending heartbeats; [cleared_us, removed]."""
        shard = self._shard(user_id)
        return await self.scripts.clear_history(
            self.redis,
            [keys.history_key(shard, user_id), keys.hdelta_key(shard), keys.hbatch_key(shard)],
            [user_id],
        )
