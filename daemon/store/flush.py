"""The flusher's scripts: capture a shard's pending deltas under a lease, trim watch history, finish a
committed batch, capture and finish unique viewers HLLs (docs/design.md, decision 4).

The flusher owns what a batch means (flusher/flusher.py parses it, flusher/writer.py commits it); the
keys each script touches are named here only.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from daemon import keys
from daemon.store.base import StoreBase, all_checked, batch_keys
from daemon.views.drains import read_drains

UNIQUES_PER_CALL = 200  # members of each touch set per shard per call: a dense HLL is ~14 KB


class FlushStore(StoreBase):
    # -- count batches --------------------------------------------------------------------------------

    async def capture_batches(self, owner: str) -> tuple[list[tuple[int, list[Any]]], list[int]]:
        """``capture_batch.lua`` on every shard under ``owner``'s lease: (shard, [batch_id, rows,
        states, subscriptions, heartbeats, drains]) for each shard with something to flush (a new batch,
        or the one an interrupted flusher left behind); and the shards another flusher's lease holds."""
        calls = [
            (
                [
                    *batch_keys(s),
                    keys.hdelta_key(s),
                    keys.hbatch_key(s),
                    keys.vdelta_key(s),
                    keys.vbatch_key(s),
                    keys.dirty_key(s),
                    keys.dirtybatch_key(s),
                ],
                [owner, self.settings.flush_lease_ms, f"{s}-{uuid.uuid4().hex}"],
            )
            for s in self._shards()
        ]
        results = all_checked(await self.scripts.capture_batch.call_many(self.redis, calls))
        # None: leased by another flusher; []: nothing to flush
        captured = [(shard, result) for shard, result in enumerate(results) if result]
        return captured, [shard for shard, result in enumerate(results) if result is None]

    async def batch_drains(self, shards: Sequence[int]) -> list[list[bytes]]:
        """The view drains captured with each shard's batch (its ``vbatch`` list), in one round trip."""
        return await read_drains(self.redis, [keys.vbatch_key(s) for s in shards])

    async def trim_history(self, entries: Sequence[tuple[int, str, list[str]]]) -> None:
        """``trim_history.lua`` per (shard, user, [content_id, value, ...]): drop from the user's
        history hash the entries Postgres now has (unless a newer heartbeat replaced them)."""
        calls = [([keys.history_key(shard, user)], pairs) for shard, user, pairs in entries]
        if calls:
            all_checked(await self.scripts.trim_history.call_many(self.redis, calls))

    async def finish_batches(self, batches: Sequence[tuple[int, str]], owner: str) -> None:
        """``finish_batch.lua`` per committed (shard, batch_id): delete the batch, give the flushed
        cold keys their idle TTL, release the lease."""
        settings = self.settings
        calls = [
            (
                [
                    keys.batch_key(s),
                    keys.batch_id_key(s),
                    keys.lease_key(s),
                    keys.sbatch_key(s),
                    keys.subbatch_key(s),
                    keys.hbatch_key(s),
                    keys.vbatch_key(s),
                    keys.dirtybatch_key(s),
                    keys.dirty_key(s),
                ],
                [batch_id, owner, settings.counts_idle_ttl_s, settings.state_idle_ttl_s],
            )
            for s, batch_id in batches
        ]
        all_checked(await self.scripts.finish_batch.call_many(self.redis, calls))

    # -- leases ---------------------------------------------------------------------------------------

    async def take_lease(self, shard: int, owner: str) -> bool:
        """``take_lease.lua``: the shard's flush lease for ``owner`` (renewed when it holds it)."""
        return bool(
            await self.scripts.take_lease(
                self.redis, [keys.lease_key(shard)], [owner, self.settings.flush_lease_ms]
            )
        )

    async def release_lease(self, shard: int, owner: str) -> None:
        await self.scripts.release_lease(self.redis, [keys.lease_key(shard)], [owner])

    async def release_leases(self, owner: str) -> None:
        """Every lease ``owner`` holds, released (a flusher that stops)."""
        calls = [([keys.lease_key(s)], [owner]) for s in self._shards()]
        await self.scripts.release_lease.call_many(self.redis, calls)

    # -- unique viewers -------------------------------------------------------------------------------

    async def capture_uniques(self, shards: Sequence[int]) -> list[list[Any]]:
        """``capture_uniques.lua`` per shard (raw replies): [more, daily_n, (member, count, hll)...]."""
        calls = [
            (
                [
                    keys.uv_touch_key(s),
                    keys.uv_batch_key(s),
                    keys.uv_all_touch_key(s),
                    keys.uv_all_batch_key(s),
                ],
                [keys.tag(s), UNIQUES_PER_CALL],
            )
            for s in shards
        ]
        return all_checked(await self.scripts.capture_uniques.call_many(self.redis, calls, raw=True))

    async def finish_uniques(self, members: Mapping[int, tuple[list[str], list[str]]]) -> None:
        """``finish_uniques.lua`` per shard: forget the written (daily, all-time) members and give their
        HLLs their TTL back (after the commit, never before)."""
        settings = self.settings
        calls = [
            (
                [
                    keys.uv_batch_key(s),
                    keys.uv_touch_key(s),
                    keys.uv_all_batch_key(s),
                    keys.uv_all_touch_key(s),
                    keys.rec_key(s),
                    keys.recexp_key(s),
                ],
                [
                    keys.tag(s),
                    settings.counts_idle_ttl_s,
                    settings.unique_viewers_daily_ttl_s,
                    len(daily),
                    *daily,
                    *all_time,
                ],
            )
            for s, (daily, all_time) in members.items()
        ]
        all_checked(await self.scripts.finish_uniques.call_many(self.redis, calls))
