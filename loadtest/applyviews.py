"""Where an ``apply_views`` call's Redis time goes, per item of a drain, in isolation.

    python -m loadtest.applyviews [--items 40000] [--per-drain 5000]

A private Redis (as the bench's: no AOF here, the tests' listpack setting) with the function library,
``--items`` counts keys present with a TTL (as the flusher leaves them), then four passes over all the
items in drains of ``--per-drain`` items, one view each, with trending: without user ids, first fresh
(not in the dirty set: EXISTS, PERSIST and SADD each) then pinned (listed: none of that); then, after
a simulated flush (TTLs back, dirty set emptied), the same with one user id per item (two HLLs each,
created on the first of those passes). Printed per pass: Redis CPU-µs per item of the whole call and of
its costliest commands (``INFO commandstats``), which is what docs/benchmarks.md quotes for the
consumer's cost per event.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import msgpack
import redis.asyncio as aioredis

from daemon import keys
from daemon.proc.servers import RedisServer
from daemon.views.drains import drain_keys
from lua import Scripts

SHARD = 3
EMPTY_MAP = b"\x80"


async def passes(url: str, items: int, per_drain: int) -> list[str]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    script = Scripts.load().apply_views
    tag, names = keys.tag(SHARD), [f"item-{i}" for i in range(items)]
    bucket, seq, lines = int(time.time()) // 300, 0, []
    try:

        async def present_with_ttl() -> None:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.hset(keys.counts_key(SHARD, name), "views", 0)
                pipe.expire(keys.counts_key(SHARD, name), 86400)
            pipe.delete(keys.dirty_key(SHARD))
            await pipe.execute()

        async def one_pass(label: str, users: bool) -> None:
            nonlocal seq
            await client.config_resetstat()
            for start in range(0, items, per_drain):
                chunk = names[start : start + per_drain]
                viewers = {c: f"user-{random.randrange(1_000_000)}" for c in chunk} if users else {}
                seq += 1
                views, users_of = msgpack.packb(dict.fromkeys(chunk, 1)), msgpack.packb(viewers)
                args = [
                    "applyviews", str(seq), views, msgpack.packb({}), EMPTY_MAP,
                    users_of if viewers else EMPTY_MAP, tag, f"{time.strftime('%Y%m%d')}:{bucket}",
                    1_000_000, 86400, "",
                ]  # fmt: skip
                assert await script(client, drain_keys(SHARD), args) == 1
            stats = await client.info("commandstats")
            call = stats.pop("cmdstat_fcall", {"usec": 0})
            top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:8]
            parts = ", ".join(f"{k[8:]} {c['calls'] / items:.2f}/{c['usec'] / items:.2f}" for k, c in top)
            per_item = call["usec"] / items
            lines.append(f"{label}: {per_item:.2f} Redis CPU-us per item; per item, calls/us: {parts}")

        await present_with_ttl()
        await one_pass("fresh, no user ids ", users=False)
        await one_pass("pinned, no user ids", users=False)
        await present_with_ttl()
        await one_pass("fresh, user ids    ", users=True)
        await one_pass("pinned, user ids   ", users=True)
    finally:
        await client.aclose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40_000)
    parser.add_argument("--per-drain", type=int, default=5_000)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), appendonly=False)
        server.start()
        try:
            for line in asyncio.run(passes(server.url, ns.items, ns.per_drain)):
                print(line)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
