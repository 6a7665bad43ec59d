"""The consumer's offsets store (consumer/store.py says what it means): reserve a batch's offset ranges
and journal its drains (``begin_consumed``), then mark them applied (``finish_consumed``), in the
group's slot ``{c:<group>}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from daemon import keys
from daemon.store.base import StoreBase

Range = tuple[str, int, int]  # "<topic>:<partition>", first offset, last offset


class OffsetsStore(StoreBase):
    async def consumed_state(self, group: str, fields: Sequence[str]) -> tuple[list[Any], dict[str, str]]:
        """The applied offset of each ``"<topic>:<partition>"`` field (None: none), and every unfinished
        journal's packed ranges by batch id: one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.consumer_offsets_key(group), list(fields))
        pipe.hgetall(keys.consumer_journal_ranges_key(group))
        values, journals = await pipe.execute()
        return values, journals

    async def take_journal(self, group: str, batch_id: str) -> str | None:
        """``take_journal.lua``: a journaled batch's packed entry (ranges and drain calls), flagged as
        taken for recovery; None once finished."""
        entry = await self.scripts.take_journal(self.redis, [keys.consumer_journal_key(group)], [batch_id])
        return entry or None

    async def begin_consumed(
        self, group: str, batch_id: str, ranges: Sequence[Range], entry: str, packed_ranges: str
    ) -> list[str]:
        """``begin_consumed.lua``: reserve ``ranges`` and journal ``entry`` (the batch's ranges and drain
        calls, packed); the fields that conflict (already applied or reserved), nothing written then."""
        args: list[Any] = [batch_id, entry, packed_ranges]
        for field, first, last in ranges:
            args += (field, first, last)
        store_keys = [
            keys.consumer_offsets_key(group),
            keys.consumer_claims_key(group),
            keys.consumer_journal_key(group),
            keys.consumer_journal_ranges_key(group),
        ]
        return list(await self.scripts.begin_consumed(self.redis, store_keys, args))

    async def finish_consumed(self, group: str, batch_id: str, ranges: Sequence[Range]) -> bool:
        """``finish_consumed.lua``: raise each range's applied offset, drop the batch's journal; True
        when a recovery had taken the journal meanwhile (take_journal)."""
        args: list[Any] = [batch_id]
        for field, _, last in ranges:
            args += (field, last)
        store_keys = [
            keys.consumer_offsets_key(group),
            keys.consumer_journal_key(group),
            keys.consumer_journal_ranges_key(group),
        ]
        _, recovered = await self.scripts.finish_consumed(self.redis, store_keys, args)
        return bool(recovered)
