"""The flusher: drains Redis deltas to Postgres exactly once (docs/design.md, decision 4).

One pass: for every shard, ``capture_batch`` atomically renames the shard's delta hash to its batch
key (and its list of applied view drains, daemon/view_drains.py, to its vbatch key) under a lease, or
returns the stranded batch an interrupted flusher left behind (it never overwrites one). All captured
batches are written in one Postgres transaction that also inserts their ids into the ``flush_batches``
ledger; a batch already in the ledger was committed before a crash and is only deleted.
``finish_batch`` deletes the Redis side after the commit, never before. Killed at any point, the next
pass resumes: nothing lost, nothing counted twice. Several flushers may run: shards they do not hold
the lease of are skipped. Each pass also writes the current figures of the unique viewers HLLs that
changed (flusher/uniques.py: absolute values, so they need no ledger).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

import asyncpg
from redis.exceptions import RedisError

from daemon import db, keys
from daemon.history import prune_clears
from daemon.metrics import Metrics
from daemon.pg_idempotency import prune_playlist_idempotency
from daemon.reconcile import reconcile
from daemon.settings import Settings
from daemon.store import Store
from daemon.view_drains import COUNTER_INDEX, add_drains, read_drains
from flusher.history_writer import parse_heartbeats, trim_calls
from flusher.uniques import flush_uniques
from flusher.writer import CapturedBatch, WriteResult, prune_ledger, write_batches
from lua import Scripts

log = logging.getLogger(__name__)

_PRUNE_EVERY_S = 3600.0


class Flusher:
    def __init__(
        self, settings: Settings, redis: object, pool: asyncpg.Pool, scripts: Scripts, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.scripts = scripts
        self.metrics = metrics
        self.store = Store(settings, redis, scripts, db.provided(pool), metrics)
        self.owner = f"flusher-{uuid.uuid4().hex[:12]}"
        self._stopping = asyncio.Event()
        self._last_prune = 0.0
        self._last_reconcile = time.monotonic()  # the first run one interval after start

    # -- one pass ---------------------------------------------------------------------------------

    async def capture(self) -> list[CapturedBatch]:
        calls = []
        for shard in range(self.settings.shards):
            calls.append(
                (
                    [
                        keys.delta_key(shard),
                        keys.batch_key(shard),
                        keys.batch_id_key(shard),
                        keys.lease_key(shard),
                        keys.sdelta_key(shard),
                        keys.sbatch_key(shard),
                        keys.subdelta_key(shard),
                        keys.subbatch_key(shard),
                        keys.hdelta_key(shard),
                        keys.hbatch_key(shard),
                        keys.vdelta_key(shard),
                        keys.vbatch_key(shard),
                        keys.dirty_key(shard),
                        keys.dirtybatch_key(shard),
                    ],
                    [self.owner, self.settings.flush_lease_ms, f"{shard}-{uuid.uuid4().hex}"],
                )
            )
        results = await self.scripts.capture_batch.call_many(self.redis, calls)
        batches = []
        with_drains = []
        for shard, result in enumerate(results):
            if isinstance(result, Exception):
                raise result
            if not result:  # None: leased by another flusher; []: nothing to flush
                continue
            batch_id, flat, states, subscriptions, heartbeats, drains = result
            rows, creators = _parse_rows(flat)
            subs = _parse_states(subscriptions)
            batches.append(
                CapturedBatch(
                    shard, batch_id, rows, _parse_states(states), creators, subs, parse_heartbeats(heartbeats)
                )
            )
            if int(drains):
                with_drains.append(batches[-1])
        captured = await read_drains(self.redis, [keys.vbatch_key(b.shard) for b in with_drains])
        for batch, drains in zip(with_drains, captured, strict=True):
            add_drains(batch.rows, drains)
        return batches

    async def trim_history(self, batches: Sequence[CapturedBatch]) -> None:
        """After the commit: drop from each user's ``hist`` hash the entries Postgres now has (those
        not replaced by a newer heartbeat meanwhile). Before ``finish``, so a crash only repeats it."""
        calls = trim_calls(((b.shard, b.history) for b in batches), keys.history_key)
        if not calls:
            return
        for result in await self.scripts.trim_history.call_many(self.redis, calls):
            if isinstance(result, Exception):
                raise result

    async def finish(self, batches: Sequence[CapturedBatch]) -> None:
        calls = [
            (
                [
                    keys.batch_key(b.shard),
                    keys.batch_id_key(b.shard),
                    keys.lease_key(b.shard),
                    keys.sbatch_key(b.shard),
                    keys.subbatch_key(b.shard),
                    keys.hbatch_key(b.shard),
                    keys.vbatch_key(b.shard),
                    keys.dirtybatch_key(b.shard),
                    keys.dirty_key(b.shard),
                ],
                [b.batch_id, self.owner, self.settings.counts_idle_ttl_s, self.settings.state_idle_ttl_s],
            )
            for b in batches
        ]
        for result in await self.scripts.finish_batch.call_many(self.redis, calls):
            if isinstance(result, Exception):
                raise result

    async def flush_once(self) -> WriteResult | None:
        """Capture, write and finish one pass (counters, then unique viewers). None when there was no
        counter to flush."""
        started = time.perf_counter()
        await self.flush_unique_viewers()
        await self.sweep_records()
        batches = await self.capture()
        if not batches:
            self.metrics.flush_completed()
            return None
        async with self.pool.acquire() as conn:
            result = await write_batches(conn, batches)
        await self.trim_history(batches)
        await self.finish(batches)
        self.metrics.flushed_rows.inc(result.rows)
        self.metrics.flushed_history_rows.inc(result.history_rows)
        self.metrics.flushed_batches.inc(len(result.committed))
        self.metrics.skipped_batches.inc(len(result.already))
        self.metrics.flush_seconds.observe(time.perf_counter() - started)
        self.metrics.flush_completed()
        if result.already:
            log.info(
                "%d batches were already committed by an interrupted flush; deleted", len(result.already)
            )
        log.debug("flushed %d batches, %d rows", len(result.committed), result.rows)
        return result

    async def flush_unique_viewers(self) -> bool:
        """The current counts of the unique viewers HLLs that changed (flusher/uniques.py); True when
        none is left for another pass."""
        rows, done = await flush_uniques(self.redis, self.pool, self.scripts, self.settings)
        self.metrics.flushed_unique_rows.inc(rows)
        return done

    async def sweep_records(self) -> int:
        """Records whose lifetime is over (Idempotency-Key answers, comment markers, drain marks of
        processes gone quiet): removed, so that they cost memory only while they matter."""
        return await self.store.sweep_records()

    async def drain(self) -> tuple[int, int]:
        """Flush until nothing is pending (``--once``). Returns (batches, rows)."""
        batches = rows = 0
        while (result := await self.flush_once()) is not None:
            batches += len(result.committed)
            rows += result.rows
        while not await self.flush_unique_viewers():
            pass
        return batches, rows

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        delay = interval
        next_at = time.monotonic()
        while not self._stopping.is_set():
            try:
                await self.flush_once()
                await self._maybe_prune()
                await self._maybe_reconcile()
                delay = interval
            except (RedisError, OSError, asyncpg.PostgresError, TimeoutError) as exc:
                self.metrics.flush_errors.inc()
                log.warning("flush pass failed (%s); retrying in %.1fs", exc, delay)
                delay = min(delay * 2, 30.0)
            next_at = (
                max(next_at + interval, time.monotonic()) if delay == interval else time.monotonic() + delay
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), max(0.0, next_at - time.monotonic()))
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping.set()

    async def release_leases(self) -> None:
        calls = [([keys.lease_key(s)], [self.owner]) for s in range(self.settings.shards)]
        await self.scripts.release_lease.call_many(self.redis, calls)

    async def _maybe_reconcile(self) -> None:
        """Every ENGAGEMENT_RECONCILE_INTERVAL_S (0: never), between passes: under this flusher's own
        lease token, so it never races this flusher's flushes nor, through the lease, another's."""
        every = self.settings.reconcile_interval_s
        now = time.monotonic()
        if every <= 0 or now - self._last_reconcile < every:
            return
        self._last_reconcile = now
        await reconcile(self.store, self.pool, self.metrics, owner=self.owner)

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < _PRUNE_EVERY_S:
            return
        self._last_prune = now
        async with self.pool.acquire() as conn:
            pruned = await prune_ledger(conn, self.settings.flush_ledger_retention_days)
            clears = await prune_clears(conn, self.settings.flush_ledger_retention_days)
            keys_pruned = await prune_playlist_idempotency(conn, self.settings.idempotency_ttl_s)
        if pruned or clears or keys_pruned:
            log.info(
                "pruned %d flush ledger entries, %d history clears, %d playlist idempotency records",
                pruned,
                clears,
                keys_pruned,
            )


def _parse_rows(flat: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """content_counters rows {content_id: [views, likes, ...]} and creator_counters deltas
    {creator_id: subscribers} from the captured delta hash."""
    rows: dict[str, list[int]] = {}
    creators: dict[str, int] = {}
    width = len(keys.COUNTERS)
    for i in range(0, len(flat), 2):
        counter, content_id = keys.parse_delta_field(flat[i])
        index = COUNTER_INDEX.get(counter)
        if index is None:
            if counter == "subscribers":  # keys.CREATOR_COUNTERS: the id is a creator id
                creators[content_id] = creators.get(content_id, 0) + int(flat[i + 1])
            else:
                log.error("unknown delta field %r kept out of Postgres", flat[i])
            continue
        row = rows.get(content_id)
        if row is None:
            row = rows[content_id] = [0] * width
        row[index] += int(flat[i + 1])
    return rows, creators


def _parse_states(flat: Sequence[str]) -> dict[tuple[str, str], int]:
    """{(user_id, content_id): 1 | -1 | 0} from the captured like-state hash, or
    {(user_id, creator_id): 1 | 0} from the captured subscription hash (same field layout)."""
    states = {}
    for i in range(0, len(flat), 2):
        content_id, _, user_id = flat[i].partition("|")
        states[(user_id, content_id)] = int(flat[i + 1])
    return states
