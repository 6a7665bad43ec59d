"""Redis sizing (loadtest/memory.py): the private servers, the service's objects on them, and the tools
that write keys through the store and measure the bytes they cost."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from loadtest.procs import log

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


class SizingBase:
    """The private servers, the service's store and flusher on them, and the measuring tools; the kinds
    measured are loadtest/memory_kinds.py's ``Sizing``."""

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


def _cold(name: str) -> bool:
    kind = name.split("}:", 1)[-1].split(":", 1)[0]
    return name.startswith("eng:{s:") and kind in ("c", "cr", "lk", "sb", "uv", "uvd", "reg")
