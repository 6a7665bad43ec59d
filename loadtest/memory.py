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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.memory_base import DENSE, ITEMS_FOR_STATES, N
from loadtest.memory_kinds import Sizing
from loadtest.procs import RESULTS
from loadtest.report import table


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
