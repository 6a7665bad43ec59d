"""``engagementd reconcile``: make the counts and states Redis holds agree with Postgres plus pending deltas.

Redis holds a copy of what Postgres has, for the items, creators and pairs in use (docs/redis-memory.md),
and Postgres is the durable store (docs/design.md, decision 5). A copy Redis lost (a restart without
persistence, FLUSHALL, an eviction) needs no repair: it is loaded from Postgres when next needed. A copy
that is present and wrong (a failover to a stale replica, a hand edit, a bug, a write made in Postgres
alone while Redis was unreachable) is what reconcile repairs: the true value of a counter is the
Postgres value plus what Redis still holds pending for it: the shard's ``delta`` hash and ``vdelta``
list of view drains, and a captured ``batch`` (hash and drains) that is not yet in the flush ledger.

Reconcile lists the cold keys Redis holds (SCAN), then, per shard, takes the shard's flush lease (the
same lease ``capture_batch`` takes, so no flusher captures, writes or finishes that shard meanwhile and
the Postgres counters of its items cannot move), reads the Postgres values of those keys and calls
``reconcile_live.lua``. The script adds the pending deltas and compares with the key in one atomic
step, so an increment arriving at any moment is counted once: it is in both the key and the delta,
before or after the script. Like states and subscriptions are set from ``likes`` and
``creator_subscriptions`` unless a pending state is newer. A key pinned without anything pending gets
its idle TTL back.

A shard leased by a running flusher is waited for briefly, then skipped (reported); the next run takes
it. Reconcile never holds more than one lease at a time.

Pairs the api wrote straight to Postgres while Redis was unreachable (``fallback_log``, daemon/fallback.py)
are settled first, under the same lease (daemon/reconcile_fallbacks.py); their keys are then checked
like the others, and the loads of them under way (which read Postgres before the settlement) are
refused their seeds (lua/lib/cold.lua).

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

from daemon import comment_counts, keys, logs, reconcile_fallbacks
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.store import Store
from daemon.store.cold import ColdLoader, parse

log = logging.getLogger(__name__)

_PRUNE_COMMENT_KEYS = "DELETE FROM comment_idempotency WHERE created_at < now() - make_interval(secs => $1)"
_CHUNK = 2_000  # entries per script call: keeps one call short
_SCAN = 1_000
_LEASE_ATTEMPTS = 40  # x _LEASE_WAIT_S: how long a shard leased by a flusher is waited for
_LEASE_WAIT_S = 0.05
_SHARD_ATTEMPTS = 5  # a shard whose lease or batch changed under us is done again
_REPAIRS_KEPT = 100


@dataclass(slots=True)
class Repair:
    field: str  # "<counter>:<id>"
    was: int
    now: int


@dataclass(slots=True)
class Report:
    shards: int = 0  # shards reconciled
    skipped_shards: list[int] = field(default_factory=list)  # leased by a flusher the whole time
    items_checked: int = 0  # content items and creators compared
    fields_repaired: int = 0  # counter fields set
    drift: int = 0  # sum of |true - live| over the repaired fields
    states_repaired: int = 0  # like states set
    subscriptions_repaired: int = 0  # subscriptions set
    keys_unpinned: int = 0  # keys without a TTL and nothing pending, given their idle TTL back
    fallbacks_settled: int = 0  # fallback_log rows (writes made while Redis was down) settled
    comments_settled: int = 0  # comment rows whose count change was applied by this run
    repairs: list[Repair] = field(default_factory=list)  # the first few, for the log and the CLI

    def summary(self) -> str:
        skipped = f", {len(self.skipped_shards)} shards skipped (leased)" if self.skipped_shards else ""
        return (
            f"reconciled {self.shards} shards{skipped}: {self.items_checked} items checked, "
            f"{self.fields_repaired} fields repaired, drift {self.drift}, "
            f"{self.states_repaired} like states and {self.subscriptions_repaired} subscriptions rebuilt"
            + (f", {self.keys_unpinned} keys unpinned" if self.keys_unpinned else "")
            + (f", {self.fallbacks_settled} fallback writes settled" if self.fallbacks_settled else "")
            + (f", {self.comments_settled} comment counts settled" if self.comments_settled else "")
        )

    def add(self, found: Report) -> None:
        for name in (
            "fields_repaired",
            "drift",
            "states_repaired",
            "subscriptions_repaired",
            "keys_unpinned",
        ):
            setattr(self, name, getattr(self, name) + getattr(found, name))
        self.repairs.extend(found.repairs[: max(0, _REPAIRS_KEPT - len(self.repairs))])


@dataclass(slots=True)
class Held:
    """The cold keys of one shard to check: ids of items and creators, pairs (target, user)."""

    items: set[str] = field(default_factory=set)
    creators: set[str] = field(default_factory=set)
    likes: set[tuple[str, str]] = field(default_factory=set)
    subscriptions: set[tuple[str, str]] = field(default_factory=set)


class LeaseBusy(Exception):
    """The shard stayed leased by a flusher."""


async def reconcile(
    store: Store, pool: asyncpg.Pool, metrics: Metrics | None = None, owner: str | None = None
) -> Report:
    """Reconcile every shard; see the module docstring. ``owner`` is the lease owner token (a flusher
    passes its own, so that a lease it still holds from a failed pass does not block it)."""
    settings = store.settings
    owner = owner or f"reconcile-{uuid.uuid4().hex[:12]}"
    report = Report()
    report.comments_settled = await comment_counts.settle_pending(store, pool)
    async with pool.acquire() as conn:
        await conn.execute(_PRUNE_COMMENT_KEYS, float(settings.idempotency_ttl_s))
        fallbacks = await reconcile_fallbacks.read_fallbacks(conn, settings)
    held = await held_keys(store.redis, settings.shards)
    for shard, rows in fallbacks.items():
        for row in rows:
            pair = (row["target_id"], row["user_id"])
            if row["kind"] == "like":
                held[shard].items.add(pair[0])
                held[shard].likes.add(pair)
            else:
                held[shard].creators.add(pair[0])
                held[shard].subscriptions.add(pair)
    for shard in range(settings.shards):
        try:
            await _reconcile_shard(
                store, pool, owner, shard, held.get(shard, Held()), report, fallbacks.get(shard, [])
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


async def held_keys(redis: Any, shards: int) -> dict[int, Held]:
    """The cold keys of counts, like states and subscriptions Redis holds now, by shard (one SCAN of
    the keyspace; on a cluster, of every primary)."""
    held: dict[int, Held] = defaultdict(Held)
    async for name in redis.scan_iter(match=f"{keys.PREFIX}:{{s:*}}:*", count=_SCAN):
        try:
            kind, ident = parse(name)
            shard = int(name[name.index("{s:") + 3 : name.index("}")])
        except ValueError:
            continue
        if shard >= shards:
            continue
        if kind == "c":
            held[shard].items.add(ident)
        elif kind == "cr":
            held[shard].creators.add(ident)
        elif kind in ("lk", "sb"):
            target, _, user = ident.partition("|")
            (held[shard].likes if kind == "lk" else held[shard].subscriptions).add((target, user))
    return held


async def _take_lease(store: Store, owner: str, shard: int) -> None:
    for _ in range(_LEASE_ATTEMPTS):
        if await store.take_lease(shard, owner):
            return
        await asyncio.sleep(_LEASE_WAIT_S)  # the flusher holding it finishes its pass: poll briefly
    raise LeaseBusy(shard)


async def _reconcile_shard(
    store: Store,
    pool: asyncpg.Pool,
    owner: str,
    shard: int,
    held: Held,
    report: Report,
    fallbacks: list[asyncpg.Record],
) -> None:
    settled = False
    for _attempt in range(_SHARD_ATTEMPTS):
        await _take_lease(store, owner, shard)
        try:
            if fallbacks:  # settled first, once: the pass then sets the keys from Postgres
                if not await reconcile_fallbacks.settle_fallbacks(store, pool, owner, shard, fallbacks):
                    continue
                report.fallbacks_settled += len(fallbacks)
                fallbacks = []
                settled = True  # Postgres counts moved outside a flush
            if await _reconcile_leased(store, pool, owner, shard, held, report, settled):
                report.shards += 1
                return
        finally:
            await store.release_lease(shard, owner)
    raise LeaseBusy(shard)


async def _postgres_values(
    conn: asyncpg.Connection, loader: ColdLoader, shard: int, held: Held
) -> tuple[list[tuple[str, str, list[tuple[str, int]]]], list[tuple[str, str, str]]]:
    """The count entries (key, id, [(counter, value)]) and state entries (key, pair, value) of the
    shard's held keys, as Postgres has them."""
    counts = []
    rows = {
        r["content_id"]: r
        for r in await conn.fetch(
            f"SELECT content_id, {', '.join(keys.COUNTERS)} FROM content_counters WHERE content_id = ANY($1)",
            list(held.items),
        )
    }
    for item in sorted(held.items):
        row = rows.get(item)
        values = [(c, int(row[c]) if row else 0) for c in keys.COUNTERS]
        counts.append((keys.counts_key(shard, item), item, values))
    subscribers = dict(
        await conn.fetch(
            "SELECT creator_id, subscribers FROM creator_counters WHERE creator_id = ANY($1)",
            list(held.creators),
        )
    )
    for creator in sorted(held.creators):
        counts.append(
            (keys.creator_key(shard, creator), creator, [("subscribers", int(subscribers.get(creator, 0)))])
        )
    states = []
    names = {keys.like_key(shard, c, u): keys.state_field(c, u) for c, u in sorted(held.likes)}
    names.update(
        {keys.subscription_key(shard, c, u): keys.state_field(c, u) for c, u in sorted(held.subscriptions)}
    )
    if names:
        found = await loader.read(conn, list(names))
        states = [(name, pair, found[name]) for name, pair in names.items()]
    return counts, states


async def _reconcile_leased(
    store: Store, pool: asyncpg.Pool, owner: str, shard: int, held: Held, report: Report, settled: bool
) -> bool:
    batch = await reconcile_fallbacks.batch_state(store, pool, shard)
    async with pool.acquire() as conn:
        counts, states = await _postgres_values(conn, store.loader, shard, held)
    found = Report()
    for chunk_counts, chunk_states in _chunks(counts, states):
        result = await store.reconcile_live(shard, owner, batch, settled, chunk_counts, chunk_states)
        if result[0] != "ok":
            # The lease expired (or the batch changed): what was already set is right for the state it saw;
            # the whole shard is done again under a new lease.
            log.info("shard %d changed during reconcile; retrying", shard)
            return False
        _add_found(found, result)
    report.items_checked += len(held.items) + len(held.creators)
    report.add(found)
    return True


def _add_found(found: Report, result: list[Any]) -> None:
    """Add one ``reconcile_live`` answer's figures and repairs to ``found``."""
    found.fields_repaired += int(result[1])
    found.drift += int(result[2])
    found.states_repaired += int(result[3])
    found.subscriptions_repaired += int(result[4])
    found.keys_unpinned += int(result[5])
    changes = result[6:]
    for i in range(0, len(changes), 3):
        found.repairs.append(Repair(changes[i], int(changes[i + 1]), int(changes[i + 2])))


def _chunks(counts: Sequence[Any], states: Sequence[Any]) -> Iterable[tuple[Sequence[Any], Sequence[Any]]]:
    """Script calls of at most _CHUNK entries each; at least one call (it also checks the lease)."""
    sections = [list(counts), list(states)]
    first = True
    while first or any(sections):
        first = False
        budget = _CHUNK
        taken = []
        for i, section in enumerate(sections):
            taken.append(section[:budget])
            sections[i] = section[budget:]
            budget -= len(taken[-1])
        yield taken[0], taken[1]


async def run_reconcile(settings: Settings) -> int:
    """``engagementd reconcile``: one run over every shard; prints the report, exits 0."""
    from daemon import db
    from daemon.redis_client import make_redis
    from lua import Scripts

    logs.log_start("reconcile", settings)
    redis = make_redis(settings)
    pool = await db.create_pool(settings)
    metrics = Metrics(roles=("flusher",))
    try:
        await keys.check_shards(redis, settings.shards)
        store = Store(settings, redis, Scripts.load(), db.provided(pool), metrics)
        report = await reconcile(store, pool, metrics)
    finally:
        await redis.aclose()
        await pool.close()
    for repair in report.repairs:
        print(f"repaired {repair.field}: {repair.was} -> {repair.now}")
    print(report.summary(), flush=True)
    return 0
