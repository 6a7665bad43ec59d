"""The consumer's idempotency store in Redis (seed 000: keyed on ``{topic}:{partition}:{offset}``,
entries expiring after 24 h), kept per partition instead of per message.

A partition is consumed in offset order and a batch is applied as a whole before its offsets are
committed, so "every offset up to N of this partition was applied" is one number: ``offsets`` holds
it per ``<topic>:<partition>`` (a hash in the group's slot ``{c:<group>}``). One field per partition
needs no expiry, and has none: an evicted offset would let a replay count twice
(docs/redis-memory.md). An offset at or below it has been seen and is skipped. That is the seed's store
(is ``topic:partition:offset`` applied?) in one field per partition and one round trip per batch
instead of one per message.

A batch's view counts go through the view buffer's drains (``apply_views.lua``, one per shard,
each remembered by its drain id). Those are many calls in many slots, so they cannot be atomic with
the offsets; the batch is journaled instead: ``begin`` reserves the batch's offset ranges (``claims``)
and stores its drains under its batch id in one call; ``finish`` raises the applied offsets and drops
the journal in one call. A consumer killed in between leaves the journal; whoever next reads a
partition it covers re-applies its drains (their marks make that count once) and finishes it, before
taking anything from that partition. A batch that finds its ranges reserved by another batch (a
consumer that lost its partitions but is still applying) recovers that batch the same way and plans
again.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import msgpack

from daemon.store import Store
from daemon.store.offsets import Range


def tp_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class OffsetStore:
    """One consumer group's offsets, on the store (its scripts: daemon/store/offsets.py)."""

    def __init__(self, store: Store, group: str) -> None:
        self._store = store
        self.group = group

    async def state(self, fields: Iterable[str]) -> tuple[dict[str, int], dict[str, list[Range]]]:
        """The applied offset of each field (absent: none applied), and the ranges of every journal
        left by a batch not finished yet: one round trip."""
        fields = list(fields)
        values, journals = await self._store.consumed_state(self.group, fields)
        applied = {f: int(v) for f, v in zip(fields, values, strict=True) if v is not None}
        return applied, {batch_id: _unpack_ranges(blob) for batch_id, blob in journals.items()}

    async def begin(self, batch_id: str, ranges: list[Range], calls: list[Any]) -> list[str]:
        """Reserve ``ranges`` and journal the drain ``calls``; returns the fields that conflict
        (already applied or reserved), in which case nothing was written."""
        return await self._store.begin_consumed(
            self.group, batch_id, ranges, _pack([ranges, calls]), _pack(ranges)
        )

    async def finish(self, batch_id: str, ranges: list[Range]) -> bool:
        """Mark the ranges applied and drop the journal; True when a recovery took the journal meanwhile
        (``journal``): the batch's drain marks must then stay until the sweeper removes them."""
        return await self._store.finish_consumed(self.group, batch_id, ranges)

    async def journal(self, batch_id: str) -> tuple[list[Range], list[Any]] | None:
        """A journaled batch taken for recovery: its ranges and drain calls ([keys, args] each); None
        once finished."""
        blob = await self._store.take_journal(self.group, batch_id)
        if blob is None:
            return None
        ranges, calls = msgpack.unpackb(base64.b64decode(blob))
        return [tuple(r) for r in ranges], calls


# The client decodes replies as text: binary journal entries travel base64-encoded.
def _pack(value: Any) -> str:
    return base64.b64encode(msgpack.packb(value)).decode("ascii")


def _unpack_ranges(blob: str) -> list[Range]:
    return [tuple(r) for r in msgpack.unpackb(base64.b64decode(blob))]  # type: ignore[misc]
