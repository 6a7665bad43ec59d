"""Reconcile's scripts: repair what Redis holds from Postgres (``reconcile_live``) and settle the pairs
the api wrote to Postgres while Redis was unreachable (``settle_fallbacks``), both under the shard's
flush lease (docs/design.md, decision 5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from daemon import keys
from daemon.store.base import StoreBase, batch_keys

# A count key to repair: (key, id, [(counter, Postgres value), ...]); a state: (key, pair, value).
CountEntry = tuple[str, str, Sequence[tuple[str, int]]]
StateEntry = tuple[str, str, str]


class RepairStore(StoreBase):
    async def pending_batch(self, shard: int) -> str | None:
        """The id of the shard's captured batch, when there is one (committed to Postgres or not)."""
        return await self.redis.get(keys.batch_id_key(shard))

    async def reconcile_live(
        self,
        shard: int,
        owner: str,
        batch: tuple[str, bool],
        settled: bool,
        counts: Sequence[CountEntry],
        states: Sequence[StateEntry],
    ) -> list[Any]:
        """``reconcile_live.lua`` for some of the shard's held keys: ``batch`` is (the batch id seen or
        "", whether it is not yet in the flush ledger); ``settled``: Postgres changed outside a flush.
        Returns ["lost"] or ["ok", repaired fields, drift, states, subscriptions, unpinned, changes...]."""
        s = shard
        script_keys = [
            *batch_keys(s),
            keys.vdelta_key(s),
            keys.vbatch_key(s),
            keys.dirty_key(s),
            keys.dirtybatch_key(s),
            keys.rec_key(s),
            keys.recexp_key(s),
        ]
        batch_id, batch_pending = batch
        args: list[str | int] = [
            owner,
            batch_id,
            "1" if batch_pending else "0",
            "1" if settled else "0",
            self.settings.counts_idle_ttl_s,
            self.settings.state_idle_ttl_s,
            len(counts),
        ]
        for key, ident, values in counts:
            args += (key, ident, len(values))
            for counter, value in values:
                args += (counter, value)
        args.append(len(states))
        for entry in states:
            args.extend(entry)
        return await self.scripts.reconcile_live(self.redis, script_keys, args)

    async def settle_fallbacks(
        self,
        shard: int,
        owner: str,
        batch: tuple[str, bool],
        pairs: tuple[Sequence[str], Sequence[str]],
        fields: Sequence[str],
    ) -> list[Any]:
        """``settle_fallbacks.lua``: drop the pending (like, subscription) ``pairs`` fields the fallback
        overrode and read what stays pending of the counter ``fields``. ``batch`` as for
        ``reconcile_live``. Returns ["lost"] or ["ok", like states, subscriptions, increments]."""
        s = shard
        likes, subscriptions = pairs
        batch_id, batch_pending = batch
        return await self.scripts.settle_fallbacks(
            self.redis,
            [
                keys.lease_key(s),
                keys.batch_id_key(s),
                keys.delta_key(s),
                keys.batch_key(s),
                keys.sdelta_key(s),
                keys.sbatch_key(s),
                keys.subdelta_key(s),
                keys.subbatch_key(s),
            ],
            [
                owner,
                self.settings.flush_lease_ms,
                batch_id,
                "1" if batch_pending else "0",
                len(likes),
                *likes,
                len(subscriptions),
                *subscriptions,
                len(fields),
                *fields,
            ],
        )
