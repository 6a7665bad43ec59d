"""``engagementd reconcile``: make Redis's live counts and states agree with Postgres plus pending deltas.

Redis is the live store and Postgres the durable one (DESIGN.md decision 5). When Redis lost data (a
restart without persistence, FLUSHALL, a failover to a stale replica) or drifted (a hand edit, a bug),
the true live value of a counter is the Postgres value plus what Redis still holds pending for it: the
shard's ``delta`` hash and ``vdelta`` list of view drains, and a captured ``batch`` (hash and drains)
that is not yet in the flush ledger.

Per shard, reconcile takes the shard's flush lease (the same lease ``capture_batch`` takes, so no
flusher captures, writes or finishes that shard meanwhile and the Postgres counters of its items cannot
move), reads the Postgres values of every item and creator known to Postgres or to Redis, and calls
``reconcile_live.lua``. The script adds the pending deltas and compares with the live hash in one atomic
step, so an increment arriving at any moment is counted once: it is in both the live value and the delta,
before or after the script. Like states and subscriptions are rebuilt from ``likes`` and
``creator_subscriptions`` for pairs with no pending state (a pending state is newer than Postgres).

A shard leased by a running flusher is waited for briefly, then skipped (reported); the next run takes
it. Reconcile never holds more than one lease at a time.

Pairs the api wrote straight to Postgres while Redis was unreachable (``fallback_log``, api/fallback.py)
are settled first, under the same lease: see daemon/reconcile_fallbacks.py.

Before the shards, comment rows whose count change is not in Redis yet (posted or deleted while Redis was
unreachable, or by a process that died before applying it) get it applied exactly once
(``daemon.comment_counts.settle_pending``); expired comment Idempotency-Key records are pruned.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from daemon import comment_counts, keys, reconcile_fallbacks
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.view_drains import drain_items, read_drains
from lua import Scripts

log = logging.getLogger(__name__)

_PRUNE_COMMENT_KEYS = "DELETE FROM comment_idempotency WHERE created_at < now() - make_interval(secs => $1)"

_COUNTER_SET = frozenset(keys.COUNTERS)
_CHUNK = 2_000  # entries per script call: keeps one call short
_LEASE_ATTEMPTS = 40  # x _LEASE_WAIT_S: how long a shard leased by a flusher is waited for
_LEASE_WAIT_S = 0.05
_SHARD_ATTEMPTS = 5  # a shard whose lease or batch changed under us is done again


@dataclass(slots=True)
class Repair:
    field: str  # "<counter>:<id>" in the live hash
    was: int
    now: int


@dataclass(slots=True)
class Report:
    shards: int = 0  # shards reconciled
    skipped_shards: list[int] = field(default_factory=list)  # leased by a flusher the whole time
    items_checked: int = 0  # content items and creators compared
    fields_repaired: int = 0  # live counter fields set
    drift: int = 0  # sum of |true - live| over the repaired fields
    states_repaired: int = 0  # like-state entries set or removed
    subscriptions_repaired: int = 0  # subscription entries set or removed
    fallbacks_settled: int = 0  # fallback_log rows (writes made while Redis was down) settled
    comments_settled: int = 0  # comment rows whose count change was applied by this run
    repairs: list[Repair] = field(default_factory=list)  # the first few, for the log and the CLI

    def summary(self) -> str:
        skipped = f", {len(self.skipped_shards)} shards skipped (leased)" if self.skipped_shards else ""
        return (
            f"reconciled {self.shards} shards{skipped}: {self.items_checked} items checked, "
            f"{self.fields_repaired} fields repaired, drift {self.drift}, "
            f"{self.states_repaired} like states and {self.subscriptions_repaired} subscriptions rebuilt"
            + (f", {self.fallbacks_settled} fallback writes settled" if self.fallbacks_settled else "")
            + (f", {self.comments_settled} comment counts settled" if self.comments_settled else "")
        )


_REPAIRS_KEPT = 100


class LeaseBusy(Exception):
    """The shard stayed leased by a flusher."""


async def reconcile(
    settings: Settings,
    redis: Any,
    pool: asyncpg.Pool,
    metrics: Metrics | None = None,
    scripts: Scripts | None = None,
    owner: str | None = None,
) -> Report:
    """Reconcile every shard; see the module docstring. ``owner`` is the lease owner token (a flusher
    passes its own, so that a lease it still holds from a failed pass does not block it)."""
    scripts = scripts or Scripts.load()
    owner = owner or f"reconcile-{uuid.uuid4().hex[:12]}"
    report = Report()
    report.comments_settled = await comment_counts.settle_pending(redis, scripts, pool, settings)
    async with pool.acquire() as conn:
        await conn.execute(_PRUNE_COMMENT_KEYS, float(settings.idempotency_ttl_s))
        content_ids = _by_shard(
            (
                r[0]
                for r in await conn.fetch(
                    "SELECT content_id FROM content_counters UNION SELECT content_id FROM likes"
                )
            ),
            settings.shards,
        )
        creators = _by_shard(
            (
                r[0]
                for r in await conn.fetch(
                    "SELECT creator_id FROM creator_counters"
                    " UNION SELECT creator_id FROM creator_subscriptions"
                )
            ),
            settings.shards,
        )
        fallbacks = await reconcile_fallbacks.read_fallbacks(conn, settings)
        for shard, rows in fallbacks.items():
            content_ids[shard].update(r["target_id"] for r in rows if r["kind"] == "like")
            creators[shard].update(r["target_id"] for r in rows if r["kind"] == "subscription")
    for shard in range(settings.shards):
        try:
            await _reconcile_shard(
                settings,
                redis,
                pool,
                scripts,
                owner,
                shard,
                content_ids[shard],
                creators[shard],
                report,
                fallbacks.get(shard, []),
            )
        except LeaseBusy:
            report.skipped_shards.append(shard)
    if metrics is not None:
        metrics.reconcile_runs.inc()
        metrics.reconcile_repaired_fields.inc(report.fields_repaired)
        metrics.reconcile_drift.inc(report.drift)
    if report.fields_repaired or report.states_repaired or report.subscriptions_repaired:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    return report


def _by_shard(ids: Iterable[str], shards: int) -> dict[int, set[str]]:
    grouped: dict[int, set[str]] = defaultdict(set)
    for item in ids:
        grouped[keys.shard_of(item, shards)].add(item)
    return grouped


async def _take_lease(settings: Settings, redis: Any, scripts: Scripts, owner: str, shard: int) -> None:
    lease = [keys.lease_key(shard)]
    for _ in range(_LEASE_ATTEMPTS):
        if await scripts.take_lease(redis, lease, [owner, settings.flush_lease_ms]):
            return
        await asyncio.sleep(_LEASE_WAIT_S)  # the flusher holding it finishes its pass: poll briefly
    raise LeaseBusy(shard)


async def _reconcile_shard(
    settings: Settings,
    redis: Any,
    pool: asyncpg.Pool,
    scripts: Scripts,
    owner: str,
    shard: int,
    pg_items: set[str],
    pg_creators: set[str],
    report: Report,
    fallbacks: list[asyncpg.Record],
) -> None:
    for _attempt in range(_SHARD_ATTEMPTS):
        await _take_lease(settings, redis, scripts, owner, shard)
        try:
            if fallbacks:  # settled first, once: the normal pass then sets live counts and states
                if not await reconcile_fallbacks.settle_fallbacks(
                    settings, redis, pool, owner, shard, fallbacks
                ):
                    continue
                report.fallbacks_settled += len(fallbacks)
                fallbacks = []
            if await _reconcile_leased(
                settings, redis, pool, scripts, owner, shard, pg_items, pg_creators, report
            ):
                report.shards += 1
                return
        finally:
            await scripts.release_lease(redis, [keys.lease_key(shard)], [owner])
    raise LeaseBusy(shard)


async def _reconcile_leased(
    settings: Settings,
    redis: Any,
    pool: asyncpg.Pool,
    scripts: Scripts,
    owner: str,
    shard: int,
    pg_items: set[str],
    pg_creators: set[str],
    report: Report,
) -> bool:
    pipe = redis.pipeline(transaction=False)
    pipe.get(keys.batch_id_key(shard))
    for key in (keys.live_key(shard), keys.delta_key(shard), keys.batch_key(shard)):
        pipe.hkeys(key)
    pipe.hkeys(keys.state_key(shard))
    pipe.hkeys(keys.subs_key(shard))
    batch_id, live_f, delta_f, batch_f, state_f, subs_f = await pipe.execute()
    items, creators = set(pg_items), set(pg_creators)
    for drains in await read_drains(redis, [keys.vdelta_key(shard), keys.vbatch_key(shard)]):
        items.update(drain_items(drains))
    for name in (*live_f, *delta_f, *batch_f):
        counter, item = keys.parse_delta_field(name)
        if counter in _COUNTER_SET:
            items.add(item)
        elif counter in keys.CREATOR_COUNTERS:
            creators.add(item)

    async with pool.acquire() as conn:
        batch_pending = False
        if batch_id:
            committed = await conn.fetchval("SELECT 1 FROM flush_batches WHERE batch_id = $1", batch_id)
            batch_pending = committed is None
        counters: list[tuple[str, int]] = []
        rows = {
            r["content_id"]: r
            for r in await conn.fetch(
                f"SELECT content_id, {', '.join(keys.COUNTERS)} FROM content_counters"
                " WHERE content_id = ANY($1)",
                list(items),
            )
        }
        for item in sorted(items):
            row = rows.get(item)
            counters.extend((keys.field(c, item), int(row[c]) if row else 0) for c in keys.COUNTERS)
        subscribers = dict(
            await conn.fetch(
                "SELECT creator_id, subscribers FROM creator_counters WHERE creator_id = ANY($1)",
                list(creators),
            )
        )
        counters.extend((keys.field("subscribers", c), int(subscribers.get(c, 0))) for c in sorted(creators))
        likes = {
            keys.state_field(r["content_id"], r["user_id"]): str(r["value"])
            for r in await conn.fetch(
                "SELECT user_id, content_id, value FROM likes WHERE content_id = ANY($1)", list(items)
            )
        }
        subs = {
            keys.state_field(r["creator_id"], r["user_id"]): "1"
            for r in await conn.fetch(
                "SELECT user_id, creator_id FROM creator_subscriptions WHERE creator_id = ANY($1)",
                list(creators),
            )
        }
    # Entries Redis has and Postgres does not: removed unless a pending state is newer.
    states = [*likes.items(), *((f, "0") for f in state_f if f not in likes)]
    subscriptions = [*subs.items(), *((f, "0") for f in subs_f if f not in subs)]

    script_keys = [
        keys.live_key(shard),
        keys.delta_key(shard),
        keys.batch_key(shard),
        keys.batch_id_key(shard),
        keys.lease_key(shard),
        keys.state_key(shard),
        keys.sdelta_key(shard),
        keys.sbatch_key(shard),
        keys.subs_key(shard),
        keys.subdelta_key(shard),
        keys.subbatch_key(shard),
        keys.vdelta_key(shard),
        keys.vbatch_key(shard),
    ]
    found = Report()
    for chunk_counters, chunk_states, chunk_subs in _chunks(counters, states, subscriptions):
        args: list[str | int] = [owner, batch_id or "", "1" if batch_pending else "0"]
        for section in (chunk_counters, chunk_states, chunk_subs):
            args.append(len(section))
            for name, value in section:
                args.extend((name, value))
        result = await scripts.reconcile_live(redis, script_keys, args)
        if result[0] != "ok":
            # The lease expired (or the batch changed): what was already set is right for the state it saw;
            # the whole shard is done again under a new lease.
            log.info("shard %d changed during reconcile; retrying", shard)
            return False
        found.fields_repaired += int(result[1])
        found.drift += int(result[2])
        found.states_repaired += int(result[3])
        found.subscriptions_repaired += int(result[4])
        changes = result[5:]
        for i in range(0, len(changes), 3):
            found.repairs.append(Repair(changes[i], int(changes[i + 1]), int(changes[i + 2])))
    report.items_checked += len(items) + len(creators)
    report.fields_repaired += found.fields_repaired
    report.drift += found.drift
    report.states_repaired += found.states_repaired
    report.subscriptions_repaired += found.subscriptions_repaired
    report.repairs.extend(found.repairs[: max(0, _REPAIRS_KEPT - len(report.repairs))])
    return True


def _chunks(
    counters: Sequence[tuple[str, int]], states: Sequence[tuple[str, str]], subs: Sequence[tuple[str, str]]
) -> Iterable[tuple[Sequence[tuple[str, int]], Sequence[tuple[str, str]], Sequence[tuple[str, str]]]]:
    """Script calls of at most _CHUNK entries each; at least one call (it also checks the lease)."""
    sections = [list(counters), list(states), list(subs)]
    first = True
    while first or any(sections):
        first = False
        budget = _CHUNK
        taken = []
        for i, section in enumerate(sections):
            taken.append(section[:budget])
            sections[i] = section[budget:]
            budget -= len(taken[-1])
        yield taken[0], taken[1], taken[2]


async def run_reconcile(settings: Settings) -> int:
    """``engagementd reconcile``: one run over every shard; prints the report, exits 0."""
    from daemon import db
    from daemon.redis_client import make_redis

    redis = make_redis(settings)
    pool = await db.create_pool(settings)
    try:
        await keys.check_shards(redis, settings.shards)
        report = await reconcile(settings, redis, pool, Metrics(roles=("flusher",)))
    finally:
        await redis.aclose()
        await pool.close()
    for repair in report.repairs:
        print(f"repaired {repair.field}: {repair.was} -> {repair.now}")
    print(report.summary(), flush=True)
    return 0
