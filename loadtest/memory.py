"""Redis sizing: the bytes of each kind of key, as the service writes them, measured on a private Redis.

    python -m loadtest.memory [--n 200000] [--dense 200] [--output loadtest/results/memory.json]

A private ``redis-server`` (daemon/proc/servers.py RedisServer, appendonly off, the service's
hash-max-listpack-entries, ``maxmemory 8gb`` and ``maxmemory-policy volatile-lru`` as recommended: with an
LRU/LFU policy Redis gives each small integer value its own object instead of a shared one) and a private
Postgres (migrated). The keys are written through the service's own code: the store
(``Store.set_reactions``, ``Store.set_subscription``, ``Store.apply_drains`` with
``daemon.views.drains.Drain`` calls, as the api's view buffer sends them), loading what they miss from
Postgres as in production; then ``flusher.flusher.Flusher.drain()`` flushes them, so every cold key carries
its idle TTL (its flushed, evictable state). Only the registry copy is written directly, with the exact name
and value of daemon/registry.py (``SET eng:{s:N}:reg:<id> "<creator_id>|<content_type>" EX <counts idle
TTL>``).

Per kind, N keys: ``used_memory`` (INFO) before and after deleting exactly those keys (one DEL per key,
as an eviction frees them) divided by N: the bytes one key costs — its name, value, the keyspace's
and the expires table's entries — not counting the hash tables' bucket arrays, which are reported
apart (8 bytes per slot, a power of two per table: 8-16 bytes per key in each table). Measured after
Redis finished rehashing (slots a power of two) and ``used_memory`` settled, with the service's
connections closed. Also: what creating the keys added (with the writes' side effects), MEMORY USAGE
of a sample, and the TTL the keys carry.

Ids: content ids 11 characters (A-Za-z0-9_-, like a YouTube video id), user ids 8 to 16 (uniform,
A-Za-z0-9), creator ids 24 ("UC" + 22), Idempotency-Keys 36 (a UUID). 256 shards (the default):
key names carry a 1-3 digit shard number.

Pending data is measured too: what a like costs before the flusher has it (no TTL, plus its sdelta
field and its two names in the shard's dirty set), and what a view drain leaves per item until the
next flush. And the fixed bookkeeping of a shard (rec with its load-token counter and a drain mark
per api process, recexp) and per further api process.
Output: a table on stdout and loadtest/results/memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from loadtest.procs import RESULTS, log
from loadtest.report import table

N = 200_000
DENSE = 200  # dense HLLs: 12 KB each
DENSE_VIEWERS = 10_000
SPARSE_VIEWERS = 5
ITEMS_FOR_STATES = 1_000  # like states spread over this many items (and subscriptions over creators)
RATE_LIMIT_USERS = 50_000
EXTRA_PROCESSES = 8
CHUNK = 2_000  # store calls pipelined together
MAXMEMORY = 8 << 30
_ALNUM = string.ascii_letters + string.digits
_B64 = _ALNUM + "_-"


class Ids:
    """Deterministic ids of realistic lengths."""

    def __init__(self, seed: int = 14) -> None:
        self.rng = random.Random(seed)
        self.seen: set[str] = set()

    def _new(self, alphabet: str, length: int, prefix: str = "") -> str:
        while True:
            ident = prefix + "".join(self.rng.choices(alphabet, k=length))
            if ident not in self.seen:
                self.seen.add(ident)
                return ident

    def content(self) -> str:
        return self._new(_B64, 11)

    def user(self) -> str:
        return self._new(_ALNUM, self.rng.randint(8, 16))

    def creator(self) -> str:
        return self._new(_B64, 22, "UC")

    def many(self, make: Callable[[], str], n: int) -> list[str]:
        return [make() for _ in range(n)]


async def chunked(items: Sequence[Any], size: int, fn: Callable[[Sequence[Any]], Awaitable[Any]]) -> None:
    for i in range(0, len(items), size):
        await fn(items[i : i + size])


def _raise_any(results: Iterable[Any], what: str) -> None:
    for r in results:
        if isinstance(r, Exception):
            raise RuntimeError(f"{what}: {r}") from r


class Sizing:
    """The private servers, the service's store and flusher on them, and the measurements."""

    def __init__(self, ns: argparse.Namespace, workdir: Path) -> None:
        self.ns = ns
        self.workdir = workdir
        self.ids = Ids()
        self.results: dict[str, Any] = {"kinds": {}, "pending": {}, "bookkeeping": {}}

    # -- servers and the service's objects ------------------------------------------------------------

    def start(self) -> None:
        from daemon.proc.servers import PostgresServer, RedisServer

        self.redis_server = RedisServer(self.workdir / "redis", appendonly=False)
        self.pg = PostgresServer(self.workdir / "pg", fast=True)
        self.redis_server.start()
        self.pg.init()
        self.pg.start()
        self.pg.create_database("engagement")
        env = {
            **os.environ,
            "ENGAGEMENT_REDIS_URL": self.redis_server.url,
            "ENGAGEMENT_DATABASE_URL": self.pg.dsn("engagement"),
            "ENGAGEMENT_LOG_LEVEL": "WARNING",
        }
        for name in list(env):
            if name.startswith("ENGAGEMENT_") and name not in (
                "ENGAGEMENT_REDIS_URL",
                "ENGAGEMENT_DATABASE_URL",
                "ENGAGEMENT_LOG_LEVEL",
            ):
                env.pop(name)  # the defaults: shards, idle TTLs
        # One flush pass here writes the HLLs of 200,000 items: finish_uniques for every shard in one
        # pipeline of ~10 MB, which on a busy machine outlasts the default 2 s socket timeout.
        env["ENGAGEMENT_REDIS_TIMEOUT_S"] = "60"
        from daemon.settings import Settings

        self.settings = Settings.from_env(env)

    def stop(self) -> None:
        for server in (getattr(self, "pg", None), getattr(self, "redis_server", None)):
            if server is not None:
                try:
                    server.stop()
                except Exception as exc:  # noqa: BLE001 - best effort at exit
                    log(f"stopping {server.name}: {exc}")

    async def open(self) -> None:
        import redis.asyncio as aioredis

        from daemon import db, keys
        from daemon.metrics import Metrics
        from daemon.redis_client import make_redis
        from daemon.store import Store
        from flusher.flusher import Flusher
        from lua import Scripts

        await db.migrate(self.settings)
        self.redis = make_redis(self.settings)
        self.meter = aioredis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        await self.meter.config_set("maxmemory", MAXMEMORY)
        await self.meter.config_set("maxmemory-policy", "volatile-lru")
        # Redis 7 allocates a latency histogram (tens of KB) the first time each command runs: not
        # what a key costs
        await self.meter.config_set("latency-tracking", "no")
        self.pool = await db.create_pool(self.settings)
        scripts = Scripts.load()
        metrics = Metrics(roles=())
        self.store = Store(self.settings, self.redis, scripts, db.provided(self.pool), metrics)
        self.flusher = Flusher(self.settings, self.redis, self.pool, scripts, metrics)
        await keys.check_shards(self.redis, self.settings.shards)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.meter.aclose()
        await self.pool.close()

    async def reset(self) -> None:
        """An empty Redis (the shard count recorded again, as a process does at start)."""
        from daemon import keys

        await self.meter.flushall()
        await keys.check_shards(self.redis, self.settings.shards)

    # -- measuring ------------------------------------------------------------------------------------

    async def memory(self) -> dict[str, int]:
        """used_memory once Redis has finished rehashing and the figure settled; the hash tables'
        keys, expires and slots. The service's own connections are closed first."""
        await self.redis.connection_pool.disconnect()
        last = None
        stable = 0
        deadline = time.monotonic() + 30
        while True:
            # a new connection for every reading: an old one's query and reply buffers (a pipeline of
            # 10,000 DELs) would count, and Redis shrinks them only later
            await self.meter.connection_pool.disconnect()
            await asyncio.sleep(0.25)
            info = await self.meter.info("memory")
            stats = await self.meter.execute_command("MEMORY", "STATS")
            flat = stats if isinstance(stats, dict) else dict(zip(stats[::2], stats[1::2], strict=True))
            db0 = flat.get("db.0") or {}
            ht = db0 if isinstance(db0, dict) else dict(zip(db0[::2], db0[1::2], strict=True))
            ks = await self.meter.info("keyspace")
            space = ks.get("db0", {"keys": 0, "expires": 0})
            nkeys, nexp = int(space["keys"]), int(space["expires"])
            main_slots = (int(ht.get("overhead.hashtable.main", 0)) - nkeys * 40) // 8
            exp_slots = (int(ht.get("overhead.hashtable.expires", 0)) - nexp * 24) // 8
            now = {
                "used": int(info["used_memory"]),
                "keys": nkeys,
                "expires": nexp,
                "main_slots": main_slots,
                "expires_slots": exp_slots,
            }
            rehashed = all(s == 0 or s & (s - 1) == 0 for s in (main_slots, exp_slots))
            if last is not None and rehashed and abs(now["used"] - last["used"]) < 4096:
                stable += 1
                if stable >= 2 or time.monotonic() > deadline:
                    return now
            else:
                stable = 0
                if time.monotonic() > deadline:
                    return now
            last = now

    @staticmethod
    def buckets(m: dict[str, int]) -> int:
        return 8 * (m["main_slots"] + m["expires_slots"])

    async def sample(self, names: Sequence[str]) -> dict[str, Any]:
        """MEMORY USAGE and TTL of up to 200 of the keys."""
        picked = random.Random(1).sample(list(names), min(200, len(names)))
        pipe = self.meter.pipeline(transaction=False)
        for name in picked:
            pipe.execute_command("MEMORY", "USAGE", name, "SAMPLES", "0")
            pipe.ttl(name)
            pipe.type(name)
        out = await pipe.execute()
        usage = [int(u) for u in out[0::3] if u is not None]
        ttls = [int(t) for t in out[1::3]]
        types = sorted(set(out[2::3]))
        encoding = await self.meter.object("encoding", picked[0])
        refcount = await self.meter.object("refcount", picked[0])
        return {
            "encoding": encoding,
            "value_refcount": refcount,
            "memory_usage_median": statistics.median(usage) if usage else None,
            "ttl_s_min": min(ttls),
            "ttl_s_max": max(ttls),
            "types": types,
            "example": picked[0],
            "name_chars_mean": statistics.fmean(len(n) for n in picked),
        }

    async def delete(self, names: Sequence[str]) -> int:
        deleted = 0
        for i in range(0, len(names), 10_000):
            pipe = self.meter.pipeline(transaction=False)
            for name in names[i : i + 10_000]:
                pipe.delete(name)
            deleted += sum(await pipe.execute())
        return deleted

    async def freed(
        self, kind: str, names: Sequence[str], created: dict[str, Any] | None = None, **info: Any
    ) -> None:
        """Delete ``names`` (all of one kind), record the bytes each freed; ``created``: the memory
        before they were written (and "after": once written), for what writing them added."""
        sample = await self.sample(names)
        before = await self.memory()
        deleted = await self.delete(names)
        if deleted != len(names):
            raise RuntimeError(f"{kind}: {deleted} of {len(names)} keys found to delete")
        after = await self.memory()
        freed = (before["used"] - after["used"]) - (self.buckets(before) - self.buckets(after))
        row: dict[str, Any] = {
            "keys": len(names),
            "bytes_per_key": freed / len(names),
            **sample,
            **info,
        }
        if created is not None:
            written = created.get("after", before)
            row["created_bytes_per_key"] = (written["used"] - created["used"]) / len(names)
        self.results["kinds"][kind] = row
        log(
            f"{kind}: {row['bytes_per_key']:.1f} B per key freed ({len(names):,} keys), MEMORY USAGE median "
            f"{sample['memory_usage_median']}, TTL {sample['ttl_s_min']}-{sample['ttl_s_max']} s"
        )

    # -- writes through the store ---------------------------------------------------------------------

    async def likes(
        self, pairs: Sequence[tuple[str, str]], action: str = "like", key: bool = False
    ) -> list[Any]:
        out: list[Any] = []

        async def chunk(part: Sequence[tuple[str, str]]) -> None:
            calls = [
                (c, u, action, str(uuid.UUID(int=self.ids.rng.getrandbits(128))) if key else "")
                for c, u in part
            ]
            results = await self.store.set_reactions(calls)
            _raise_any(results, "set_reactions")
            out.extend(results)

        await chunked(pairs, CHUNK, chunk)
        return out

    async def subscriptions(self, pairs: Sequence[tuple[str, str]]) -> None:
        async def chunk(part: Sequence[tuple[str, str]]) -> None:
            await asyncio.gather(*(self.store.set_subscription(c, u, "subscribe", "") for c, u in part))

        await chunked(pairs, 500, chunk)

    async def views(
        self, viewers: dict[str, list[str]], views: dict[str, int], process: str, seq: dict[int, int]
    ) -> None:
        """One drain per shard (at most 1,000 items each), as the api's buffer cuts them."""
        from daemon import keys
        from daemon.views.drains import Drain

        by_shard: dict[int, list[str]] = {}
        for content_id in views:
            by_shard.setdefault(keys.shard_of(content_id, self.settings.shards), []).append(content_id)
        day = keys.uv_day()
        drains = []
        for shard, ids in by_shard.items():
            for i in range(0, len(ids), 1000):
                part = ids[i : i + 1000]
                seq[shard] = seq.get(shard, 0) + 1
                drains.append(
                    Drain(
                        shard,
                        process,
                        seq[shard],
                        {c: views[c] for c in part},
                        {c: 30 * views[c] for c in part},
                        {},
                        {c: viewers[c] for c in part if c in viewers},
                        day,
                    )
                )
        for i in range(0, len(drains), 64):
            part = drains[i : i + 64]
            _raise_any(
                await self.store.apply_drains(
                    [d.call(self.settings) for d in part], [d.needed for d in part]
                ),
                "apply_drains",
            )

    async def flush(self) -> None:
        t0 = time.monotonic()
        batches, rows = await self.flusher.drain()
        log(f"flushed {batches} batches, {rows} rows in {time.monotonic() - t0:.1f}s")

    # -- the kinds ------------------------------------------------------------------------------------

    def key_of(self, kind: str, ident: str, user: str = "") -> str:
        from daemon import keys

        s = keys.shard_of(ident, self.settings.shards)
        return {
            "c": lambda: keys.counts_key(s, ident),
            "lk": lambda: keys.like_key(s, ident, user),
            "sb": lambda: keys.subscription_key(s, ident, user),
            "cr": lambda: keys.creator_key(s, ident),
            "uv": lambda: keys.uv_key(s, ident),
            "uvd": lambda: keys.uv_day_key(s, keys.uv_day(), ident),
            "reg": lambda: keys.registry_key(s, ident),
        }[kind]()

    async def like_states(self) -> None:
        """N like states over ITEMS_FOR_STATES items; pending before the flush; Idempotency-Key records."""
        n = self.ns.n
        await self.reset()
        items = self.ids.many(self.ids.content, ITEMS_FOR_STATES)
        await self.likes([(c, "seeduser1") for c in items])  # the items' counts, in Redis and Postgres
        await self.flush()
        users = self.ids.many(self.ids.user, n)
        pairs = [(items[i % len(items)], users[i]) for i in range(n)]
        m0 = await self.memory()
        t0 = time.monotonic()
        await self.likes(pairs)
        log(f"like states: {n:,} likes through the store in {time.monotonic() - t0:.1f}s")
        pending = await self.memory()
        await self.flush()
        m1 = await self.memory()
        self.results["pending"]["like"] = {
            "likes": n,
            "bytes_per_like_unflushed": (
                pending["used"] - m0["used"] - self.buckets(pending) + self.buckets(m0)
            )
            / n,
            "bytes_per_like_flushed": (m1["used"] - m0["used"] - self.buckets(m1) + self.buckets(m0)) / n,
            "pending_per_shard": n / self.settings.shards,
            "note": "unflushed: the lk key without TTL, its sdelta field, the lk and c names in the "
            "shard's dirty set, the likes:<id> delta field (per item); buckets excluded",
        }
        # Idempotency-Key records: the same likes again with a key (unchanged: only the record is written)
        r0 = await self.memory()
        answers = await self.likes(pairs, key=True)
        if any(a[0] != "unchanged" for a in answers):
            raise RuntimeError("Idempotency-Key likes: expected unchanged answers")
        r1 = await self.memory()
        self.results["pending"]["idempotency_record"] = {
            "records": n,
            "bytes_per_record": (r1["used"] - r0["used"]) / n,
            "lifetime_s": self.settings.idempotency_ttl_s,
            "note": "a like's Idempotency-Key answer: a field of the shard's rec hash + a recexp zset member "
            "(36-char key); kept ENGAGEMENT_IDEMPOTENCY_TTL_S, then swept",
        }
        log(f"idempotency record: {self.results['pending']['idempotency_record']['bytes_per_record']:.1f} B")
        await self.freed(
            "like state", [self.key_of("lk", c, u) for c, u in pairs], created={**m0, "after": m1}
        )

    async def subscription_states(self) -> None:
        n = self.ns.n
        await self.reset()
        creators = self.ids.many(self.ids.creator, ITEMS_FOR_STATES)
        await self.subscriptions([(c, "seeduser1") for c in creators])
        await self.flush()
        users = self.ids.many(self.ids.user, n)
        pairs = [(creators[i % len(creators)], users[i]) for i in range(n)]
        m0 = await self.memory()
        t0 = time.monotonic()
        await self.subscriptions(pairs)
        log(f"subscriptions: {n:,} through the store in {time.monotonic() - t0:.1f}s")
        await self.flush()
        await self.freed("subscription state", [self.key_of("sb", c, u) for c, u in pairs], created=m0)
        await self.freed("creator counts", [self.key_of("cr", c) for c in creators])

    async def items(self) -> None:
        """N items, each viewed by SPARSE_VIEWERS users and liked by one: counts hash, both HLLs."""
        n = self.ns.n
        await self.reset()
        items = self.ids.many(self.ids.content, n)
        viewers = {c: self.ids.many(self.ids.user, SPARSE_VIEWERS) for c in items}
        views = {c: SPARSE_VIEWERS + self.ids.rng.randint(0, 50) for c in items}
        m0 = await self.memory()
        t0 = time.monotonic()
        seq: dict[int, int] = {}
        await self.views(viewers, views, "memory-1", seq)
        await self.likes([(c, viewers[c][0]) for c in items])
        log(f"items: {n:,} viewed and liked through the store in {time.monotonic() - t0:.1f}s")
        await self.flush()
        flushed = await self.memory()
        # a view drain's pending data: the same items viewed again (views only), before the next flush
        await self.views({}, dict.fromkeys(items, 1), "memory-2", {})
        again = await self.memory()
        self.results["pending"]["view_drain_item"] = {
            "items": n,
            "bytes_per_item_unflushed": (
                again["used"] - flushed["used"] - self.buckets(again) + self.buckets(flushed)
            )
            / n,
            "note": "one item's entry in an applied drain (vdelta), its counts key pinned (no TTL) and "
            "listed in dirty; per distinct item per drain; buckets excluded",
        }
        await self.flush()
        sample = await self.meter.hgetall(self.key_of("c", items[0]))
        day = {"viewers": SPARSE_VIEWERS}
        await self.freed("daily viewers HLL (sparse)", [self.key_of("uvd", c) for c in items], **day)
        await self.freed("all-time viewers HLL (sparse)", [self.key_of("uv", c) for c in items], **day)
        await self.freed("like state (on the items)", [self.key_of("lk", c, viewers[c][0]) for c in items])
        await self.freed("item counts", [self.key_of("c", c) for c in items], created=m0, fields=sample)

    async def dense(self) -> None:
        k = self.ns.dense
        await self.reset()
        items = self.ids.many(self.ids.content, k)
        for part in range(0, k, 20):
            chunk = items[part : part + 20]
            viewers = {c: [f"v{j}-{c}" for j in range(DENSE_VIEWERS)] for c in chunk}
            await self.views(viewers, dict.fromkeys(chunk, DENSE_VIEWERS), f"memory-d{part}", {})
        await self.flush()
        info = {"viewers": DENSE_VIEWERS}
        await self.freed("daily viewers HLL (dense)", [self.key_of("uvd", c) for c in items], **info)
        await self.freed("all-time viewers HLL (dense)", [self.key_of("uv", c) for c in items], **info)

    async def hll_threshold(self) -> None:
        """Redis's own behaviour, written directly: the distinct viewers at which an HLL turns dense
        (hll-sparse-max-bytes), and its MEMORY USAGE on the way."""
        await self.reset()
        key = self.key_of("uv", "threshold01")
        sizes: dict[int, int] = {}
        n = 0
        while True:
            users = self.ids.many(self.ids.user, 10)
            await self.meter.pfadd(key, *users)
            n += 10
            if n in (10, 100, 500, 1000, 2000):
                sizes[n] = int(await self.meter.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0"))
            # a dense HLL is 12,304 bytes of registers; a sparse one at most hll-sparse-max-bytes
            if int(await self.meter.strlen(key)) > 12_000:
                break
        config = await self.meter.config_get("hll-sparse-max-bytes")
        self.results["hll"] = {
            "dense_from_viewers": n,
            "hll_sparse_max_bytes": int(config["hll-sparse-max-bytes"]),
            "memory_usage_by_viewers": sizes,
            "memory_usage_dense": int(
                await self.meter.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
            ),
        }
        log(f"HLL: dense from {n} distinct viewers; MEMORY USAGE {sizes}")

    async def registry(self) -> None:
        n = self.ns.n
        await self.reset()
        items = self.ids.many(self.ids.content, n)
        creators = self.ids.many(self.ids.creator, 1000)
        m0 = await self.memory()
        ttl = self.settings.counts_idle_ttl_s
        for i in range(0, n, 10_000):
            pipe = self.meter.pipeline(transaction=False)
            for j, c in enumerate(items[i : i + 10_000]):
                pipe.set(self.key_of("reg", c), f"{creators[(i + j) % len(creators)]}|video", ex=ttl)
            await pipe.execute()
        await self.freed(
            "registry copy", [self.key_of("reg", c) for c in items], created=m0, written="directly (SET EX)"
        )

    async def rate_limits(self) -> None:
        from daemon import keys
        from daemon.ratelimit import Limit, RateLimiter

        await self.reset()
        limiter = RateLimiter(self.redis)
        limit = Limit("like", 100, 60_000)
        users = self.ids.many(self.ids.user, RATE_LIMIT_USERS)
        m0 = await self.memory()
        for i in range(0, len(users), 500):
            await asyncio.gather(*(limiter.check(u, limit) for u in users[i : i + 500]))
        names = [keys.rate_limit_key(u, "like") for u in users]
        await self.freed(
            "rate-limit window (1 request)", names, created=m0, written="daemon.ratelimit.RateLimiter"
        )

    async def fixed(self) -> None:
        """Per shard: what stays when no cold key is left (rec with its load-token counter and the drain
        mark of one process, recexp); then per further api process (its drain mark)."""
        from daemon import keys

        await self.reset()
        empty = await self.memory()
        shards = self.settings.shards
        items: list[str] = []
        while len({keys.shard_of(c, shards) for c in items}) < shards:
            items.extend(self.ids.many(self.ids.content, shards))
        await self.views({}, dict.fromkeys(items, 1), "api-0123456789ab", {})
        await self.likes([(c, "seeduser1") for c in items])
        await self.flush()
        cold = [n async for n in self.meter.scan_iter(count=10_000) if _cold(n)]
        await self.delete(cold)
        one = await self.memory()
        for p in range(EXTRA_PROCESSES):
            await self.views({}, dict.fromkeys(items, 1), f"api-{p:012x}", {})
        await self.flush()
        cold = [n async for n in self.meter.scan_iter(count=10_000) if _cold(n)]
        await self.delete(cold)
        more = await self.memory()
        left = sorted({n.split("}:", 1)[-1] for n in [n async for n in self.meter.scan_iter(count=10_000)]})
        s0 = keys.tag(0)
        usage = {}
        for name in ("rec", "recexp", "lease"):
            usage[name] = await self.meter.execute_command("MEMORY", "USAGE", f"{s0}:{name}", "SAMPLES", "0")
        self.results["bookkeeping"] = {
            "shards": shards,
            "bytes_per_shard": (one["used"] - empty["used"]) / shards,
            "bytes_per_shard_per_extra_process": (more["used"] - one["used"]) / shards / EXTRA_PROCESSES,
            "keys_left": left,
            "memory_usage_shard_0": usage,
            "note": "after a view drain of one process and a like per shard and a flush, every cold key "
            "deleted: what is left per shard (keys_left; the flush lease only while a pass runs)",
        }
        log(f"bookkeeping: {self.results['bookkeeping']['bytes_per_shard']:.0f} B per shard")

    async def shared_integers(self) -> None:
        """The like state written directly with maxmemory 0 (shared integer objects) vs with the LRU
        policy: what the policy costs per state."""
        n = self.ns.n
        out = {}
        for label, maxmemory in (("maxmemory 0", 0), ("maxmemory + volatile-lru", MAXMEMORY)):
            await self.reset()
            await self.meter.config_set("maxmemory", maxmemory)
            names = [self.key_of("lk", f"x{i:010d}", f"u{i:011d}") for i in range(n)]
            for i in range(0, n, 10_000):
                pipe = self.meter.pipeline(transaction=False)
                for name in names[i : i + 10_000]:
                    pipe.set(name, "1", ex=self.settings.state_idle_ttl_s)
                await pipe.execute()
            before = await self.memory()
            await self.delete(names)
            after = await self.memory()
            out[label] = ((before["used"] - after["used"]) - (self.buckets(before) - self.buckets(after))) / n
        await self.meter.config_set("maxmemory", MAXMEMORY)
        self.results["like_state_value_object"] = {
            **out,
            "note": "SET eng:{s:N}:lk:x<10 digits>|u<11 digits> 1 EX <state TTL>, written directly",
        }
        log(f"like state, shared integers: {out}")

    async def run(self) -> None:
        steps = (
            self.like_states,
            self.subscription_states,
            self.items,
            self.dense,
            self.hll_threshold,
            self.registry,
            self.rate_limits,
            self.fixed,
            self.shared_integers,
        )
        for step in steps:
            t0 = time.monotonic()
            await step()
            log(f"{step.__name__}: {time.monotonic() - t0:.0f}s")


def _cold(name: str) -> bool:
    kind = name.split("}:", 1)[-1].split(":", 1)[0]
    return name.startswith("eng:{s:") and kind in ("c", "cr", "lk", "sb", "uv", "uvd", "reg")


def buckets_note() -> str:
    return (
        "plus hash-table buckets: 8 B per slot, slots a power of two >= keys, in the keyspace table and "
        "again in the expires table (every cold key has a TTL): 16-32 B per key"
    )


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    head = (
        f"Redis sizing  {m['date']}  {m['arch']}  {m['redis']}  maxmemory-policy volatile-lru  "
        f"shards {results['shards']}  took {results['seconds']:.0f}s"
    )
    rows = []
    for kind, r in results["kinds"].items():
        created = r.get("created_bytes_per_key")
        rows.append(
            (
                kind,
                f"{r['keys']:,}",
                f"{r['bytes_per_key']:.1f}",
                f"{created:.1f}" if created is not None else "-",
                str(r["memory_usage_median"]),
                f"{r['name_chars_mean']:.0f}",
                f"{r['ttl_s_max']:,}",
            )
        )
    header = ("key kind", "keys", "B/key freed", "B/key created", "MEMORY USAGE", "name chars", "TTL s")
    lines = [head, "", *table(header, rows), "", buckets_note(), ""]
    p = results["pending"]
    b = results["bookkeeping"]
    si = results.get("like_state_value_object", {})
    other = [
        ("like, unflushed (per like)", f"{p['like']['bytes_per_like_unflushed']:.1f} B"),
        ("like, flushed (per like)", f"{p['like']['bytes_per_like_flushed']:.1f} B"),
        (
            "view drain, unflushed (per item per drain)",
            f"{p['view_drain_item']['bytes_per_item_unflushed']:.1f} B",
        ),
        ("Idempotency-Key record (like)", f"{p['idempotency_record']['bytes_per_record']:.1f} B"),
        ("bookkeeping per shard (1 api process)", f"{b['bytes_per_shard']:.0f} B"),
        ("bookkeeping per shard per further process", f"{b['bytes_per_shard_per_extra_process']:.0f} B"),
    ]
    for label, v in si.items():
        if label != "note":
            other.append((f"like state written directly, {label}", f"{v:.1f} B"))
    hll = results.get("hll")
    if hll:
        other.append(("HLL turns dense at (distinct viewers, +-10)", f"{hll['dense_from_viewers']:,}"))
        for viewers, size in hll["memory_usage_by_viewers"].items():
            other.append((f"sparse HLL MEMORY USAGE at {viewers:,} viewers", f"{size:,} B"))
    lines += table(("other", "bytes"), other)
    return "\n".join(lines)


def machine() -> dict[str, str]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    return {
        "date": run(["date"]),
        "arch": run(["uname", "-m"]),
        "redis": run(["redis-server", "--version"]).split(" sha=")[0],
        "nproc": str(os.cpu_count()),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=N, help="keys per kind")
    parser.add_argument("--dense", type=int, default=DENSE, help="dense HLLs (12 KB each)")
    parser.add_argument("--output", type=Path, default=RESULTS / "memory.json")
    ns = parser.parse_args(argv)
    if ns.n < ITEMS_FOR_STATES or ns.dense < 20:
        parser.error(f"--n must be >= {ITEMS_FOR_STATES} and --dense >= 20")
    workdir = Path(tempfile.mkdtemp(prefix="engagementd-memory-"))
    os.chmod(workdir, 0o755)
    sizing = Sizing(ns, workdir)
    t0 = time.monotonic()
    try:
        sizing.start()

        async def go() -> None:
            await sizing.open()
            try:
                await sizing.run()
            finally:
                await sizing.close()

        asyncio.run(go())
    finally:
        sizing.stop()
    results = {
        "machine": machine(),
        "shards": sizing.settings.shards,
        "ids": {
            "content": "11 chars [A-Za-z0-9_-]",
            "user": "8-16 chars [A-Za-z0-9], uniform",
            "creator": "24 chars, UC + 22",
            "idempotency_key": "36 chars (UUID)",
        },
        "ttls_s": {
            "counts_idle": sizing.settings.counts_idle_ttl_s,
            "state_idle": sizing.settings.state_idle_ttl_s,
            "daily_viewers": sizing.settings.unique_viewers_daily_ttl_s,
        },
        "seconds": time.monotonic() - t0,
        "command": "python -m loadtest.memory " + " ".join(sys.argv[1:] if argv is None else argv),
        **sizing.results,
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(render(results))
    print(f"\nfull results: {ns.output}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
