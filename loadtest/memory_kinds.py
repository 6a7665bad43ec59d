"""Redis sizing (loadtest/memory.py): each kind of key measured, one method each, and the run."""

from __future__ import annotations

import asyncio
import time

from loadtest.memory_base import (
    DENSE_VIEWERS,
    EXTRA_PROCESSES,
    ITEMS_FOR_STATES,
    MAXMEMORY,
    RATE_LIMIT_USERS,
    SPARSE_VIEWERS,
    SizingBase,
    _cold,
)
from loadtest.procs import log


class Sizing(SizingBase):
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
        limiter = RateLimiter(self.store)
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
