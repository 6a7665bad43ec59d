"""The store's base: what every part of it shares (docs/design.md, decision 10).

``StoreBase`` holds the Redis client, the scripts and the cold loader; ``checked`` raises an error a
pipelined call returned in place; ``by_shard`` groups rows by the shard of their first element.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from daemon import keys
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.store.cold import ColdLoader
from lua import Scripts


class StoreBase:
    def __init__(
        self,
        settings: Settings,
        redis: Any,
        scripts: Scripts,
        pool: Callable[[], Awaitable[asyncpg.Pool]],
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.scripts = scripts
        self.loader = ColdLoader(settings, pool, metrics)

    def _shard(self, ident: str) -> int:
        return keys.shard_of(ident, self.settings.shards)

    def _shards(self) -> range:
        return range(self.settings.shards)


def batch_keys(s: int) -> list[str]:
    """The first KEYS of the scripts that work on a shard's flush batch (capture_batch, reconcile_live):
    the pending deltas and their captured batch, the batch id and the lease, the pending like states
    and subscriptions and their captured batches."""
    return [
        keys.delta_key(s),
        keys.batch_key(s),
        keys.batch_id_key(s),
        keys.lease_key(s),
        keys.sdelta_key(s),
        keys.sbatch_key(s),
        keys.subdelta_key(s),
        keys.subbatch_key(s),
    ]


def by_shard(rows: Sequence[tuple[Any, ...]], shards: int) -> dict[int, list[Any]]:
    """Rows grouped by the shard of their first element (an item or creator id), in order."""
    grouped: dict[int, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[keys.shard_of(row[0], shards)].append(row)
    return grouped


def checked(result: Any) -> Any:
    """A pipelined call's result, or the error it returned in place raised."""
    if isinstance(result, Exception):
        raise result
    return result


def all_checked(results: Sequence[Any]) -> list[Any]:
    return [checked(r) for r in results]
