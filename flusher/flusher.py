"""The flusher: drains Redis deltas to Postgres exactly once (docs/design.md, decision 4).

One pass: for every shard, ``capture_batch`` atomically renames the shard's delta hash to its batch
key (and its list of applied view drains, daemon/views/drains.py, to its vbatch key) under a lease, or
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

from daemon import db, gcpause, keys
from daemon.errors import PG_ERRORS, REDIS_ERRORS, is_unavailable
from daemon.history import prune_clears
from daemon.loops import Backoff, Loop
from daemon.metrics import Metrics
from daemon.pg_idempotency import prune_playlist_idempotency
from daemon.reconcile import reconcile
from daemon.settings import Settings
from daemon.store import Store
from daemon.views.drains import COUNTER_INDEX, DAILY_FIELDS, Daily, add_drains
from flusher.history_writer import parse_heartbeats, trim_calls
from flusher.uniques import flush_uniques
from flusher.writer import CapturedBatch, WriteResult, prune_ledger, write_batches
from lua import Scripts

log = logging.getLogger(__name__)

_PRUNE_EVERY_S = 3600.0


class Flusher(Loop):
    name = "flusher"

    def __init__(
        self, settings: Settings, redis: object, pool: asyncpg.Pool, scripts: Scripts, metrics: Metrics
    ) -> None:
        super().__init__()
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.scripts = scripts
        self.metrics = metrics
        self.store = Store(settings, redis, scripts, db.provided(pool), metrics)
        self.owner = f"flusher-{uuid.uuid4().hex[:12]}"
        self.leased_elsewhere: list[int] = []  # shards another flusher's lease held at the last capture
        self._last_prune = 0.0
        self._last_reconcile = time.monotonic()  # the first run one interval after start

    # -- one pass ---------------------------------------------------------------------------------

    async def capture(self) -> list[CapturedBatch]:
        batches, with_drains = [], []
        captured, self.leased_elsewhere = await self.store.capture_batches(self.owner)
        for shard, result in captured:
            batch_id, flat, states, subscriptions, heartbeats, drains = result
            rows, creators, daily = _parse_rows(flat)
            subs = _parse_states(subscriptions)
            batch = CapturedBatch(
                shard, batch_id, rows, _parse_states(states), creators, subs, parse_heartbeats(heartbeats)
            )
            batch.daily = daily
            batches.append(batch)
            if int(drains):
                with_drains.append(batches[-1])
        captured = await self.store.batch_drains([b.shard for b in with_drains])
        today = keys.uv_day(self.settings.unique_viewers_day)  # for entries written before daily counts
        for batch, drains in zip(with_drains, captured, strict=True):
            add_drains(batch.rows, drains, batch.daily, today)
        return batches

    async def trim_history(self, batches: Sequence[CapturedBatch]) -> None:
        """After the commit: drop from each user's ``hist`` hash the entries Postgres now has (those
        not replaced by a newer heartbeat meanwhile). Before ``finish``, so a crash only repeats it."""
        await self.store.trim_history(trim_calls((b.shard, b.history) for b in batches))

    async def finish(self, batches: Sequence[CapturedBatch]) -> None:
        await self.store.finish_batches([(b.shard, b.batch_id) for b in batches], self.owner)

    async def flush_once(self) -> WriteResult | None:
        """Capture, write and finish one pass (counters, then unique viewers). None when there was no
        counter to flush."""
        started = time.perf_counter()
        await self.flush_unique_viewers()
        await self.sweep_records()
        with gcpause.paused():  # the batch's containers live until the commit: daemon/gcpause.py
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
        rows, done = await flush_uniques(self.store, self.pool)
        self.metrics.flushed_unique_rows.inc(rows)
        return done

    async def sweep_records(self) -> int:
        """Records whose lifetime is over (Idempotency-Key answers, comment markers, drain marks of
        processes gone quiet): removed, so that they cost memory only while they matter."""
        return await self.store.sweep_records()

    async def drain(self, wait_s: float = 0.0) -> tuple[int, int]:
        """Flush until nothing is pending (``--once``). Returns (batches, rows). Shards another flusher's
        lease holds (a live flusher in its pass, or a killed one's until ENGAGEMENT_FLUSH_LEASE_MS ran
        out) are tried again for up to ``wait_s``; those still held then are ``leased_elsewhere``."""
        deadline = time.monotonic() + wait_s
        batches = rows = 0
        while True:
            while (result := await self.flush_once()) is not None:
                batches += len(result.committed)
                rows += result.rows
            if not self.leased_elsewhere or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        while not await self.flush_unique_viewers():
            pass
        return batches, rows

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Pass after pass until stopped. A pass that fails is retried with backoff: an unreachable
        server is a warning; any other error (a script bug, a constraint) is logged with its traceback
        every time, since no batch can be skipped without losing it."""
        interval = self.settings.flush_interval_ms / 1000
        backoff = Backoff(interval, 30.0)
        next_at = time.monotonic()
        while not self.stopping:
            try:
                await self.flush_once()
                await self._maybe_prune()
                await self._maybe_reconcile()
                delay = backoff.reset()
                next_at = max(next_at + interval, time.monotonic())
            except (*REDIS_ERRORS, *PG_ERRORS) as exc:
                self.metrics.flush_errors.inc()
                delay = backoff.next()
                if is_unavailable(exc):
                    log.warning("flush pass failed (%s); retrying in %.1fs", exc, delay)
                else:
                    log.exception("flush pass failed; retrying in %.1fs", delay)
                next_at = time.monotonic() + delay
            await self.pause(next_at - time.monotonic())

    async def release_leases(self) -> None:
        await self.store.release_leases(self.owner)

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


def _parse_rows(flat: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, int], Daily]:
    """content_counters rows {content_id: [views, likes, ...]}, creator_counters deltas {creator_id:
    subscribers} and content_daily rows {(content_id, day): [views, watch]} from the captured delta
    hash."""
    rows: dict[str, list[int]] = {}
    creators: dict[str, int] = {}
    daily: Daily = {}
    width = len(keys.COUNTERS)
    for i in range(0, len(flat), 2):
        counter, content_id = keys.parse_delta_field(flat[i])
        index = COUNTER_INDEX.get(counter)
        if index is None:
            if counter == "subscribers":  # keys.CREATOR_COUNTERS: the id is a creator id
                creators[content_id] = creators.get(content_id, 0) + int(flat[i + 1])
            elif counter in DAILY_FIELDS:  # "dv:<day>:<content_id>"
                day, _, item = content_id.partition(":")
                entry = daily.setdefault((item, day), [0, 0])
                entry[DAILY_FIELDS[counter]] += int(flat[i + 1])
            else:
                log.error("unknown delta field %r kept out of Postgres", flat[i])
            continue
        row = rows.get(content_id)
        if row is None:
            row = rows[content_id] = [0] * width
        row[index] += int(flat[i + 1])
    return rows, creators, daily


def _parse_states(flat: Sequence[str]) -> dict[tuple[str, str], int]:
    """{(user_id, content_id): 1 | -1 | 0} from the captured like-state hash, or
    {(user_id, creator_id): 1 | 0} from the captured subscription hash (same field layout)."""
    states = {}
    for i in range(0, len(flat), 2):
        content_id, _, user_id = flat[i].partition("|")
        states[(user_id, content_id)] = int(flat[i + 1])
    return states
