"""Under a steady view load Redis stops growing once every item has been seen (docs/redis-memory.md):
the drains' bookkeeping is one mark per process and shard, not a key per drain, so the keys Redis holds
besides the pending deltas (which the flusher takes every pass) are the same set from one second to
the next, and memory is flat. Every view still counts exactly once."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import httpx
import pytest
import redis
from service_fixtures import (
    ROOT,
    ApiProcess,
    counters_in_postgres,
    fetch,
    run_flusher_once,
    service_env,
    token,
    wait_until,
)

from daemon import keys
from daemon.settings import Settings
from daemon.store import rows

pytestmark = pytest.mark.slow

ITEMS = [f"item-{i}" for i in range(500)]
USERS = 40  # few viewers: every item's HLLs hold all of them early (an HLL grows with distinct users)
# The shard's keys that come and go with every drain and flush: pending data, taken by each flush, and
# the flush lease, taken by each capture and released by each finish.
PENDING = {
    "delta", "vdelta", "sdelta", "subdelta", "hdelta", "batch", "vbatch", "sbatch", "subbatch", "hbatch",
    "dirty", "dirtybatch", "uvtouch", "uvatouch", "uvbatch", "uvabatch", "batch_id", "lease",
}  # fmt: skip
SAMPLES, EVERY_S = 20, 0.5
_FLUSHED_SHARDS = "SELECT count(DISTINCT shard) FROM flush_batches"


def _held(client: redis.Redis) -> tuple[set[str], int]:
    """The keys Redis holds but the pending ones, and used_memory."""
    names = set()
    for name in client.scan_iter(match="*", count=1000):
        text = name.decode()
        if text.rsplit(":", 1)[-1] not in PENDING:
            names.add(text)
    return names, int(client.info("memory")["used_memory"])


def test_keys_and_memory_stay_flat_under_a_steady_view_load(migrated: Settings) -> None:
    # the clocks of the keys named by time pinned (the 5-minute trending bucket, the UTC day of the daily
    # viewers): a bucket that turns during the samples is a new key, not growth
    now = time.time()
    settings = migrated.replace(
        buffer_flush_interval_ms=20,
        flush_interval_ms=100,
        trending_clock_s=now,
        unique_viewers_day=time.strftime("%Y-%m-%d", time.gmtime(now)),
    )
    api = ApiProcess(settings)
    flusher = subprocess.Popen(
        [sys.executable, "-m", "daemon.proc.cli", "flusher"], env=service_env(settings), cwd=ROOT
    )
    sent = 0
    stop = threading.Event()
    rng = random.Random(7)
    print("seed 7")

    def load() -> None:
        nonlocal sent
        ingest = {"Authorization": f"Bearer {token('ingest-svc', scope='ingest')}"}
        with httpx.Client(base_url=api.base_url, timeout=10) as client:
            while not stop.is_set():
                batch = [
                    {"content_id": rng.choice(ITEMS), "user_id": f"u{rng.randint(1, USERS)}"}
                    for _ in range(200)
                ]
                r = client.post("/api/v1/views/batch", json=batch, headers=ingest)
                assert r.status_code == 202, r.text
                sent += 200

    loader = threading.Thread(target=load)
    loader.start()
    samples: list[tuple[set[str], int]] = []
    try:
        with redis.Redis.from_url(settings.redis_url) as client:
            # Given every item seen and every shard flushed at least once
            counts = [keys.counts_key(keys.shard_of(c, settings.shards), c) for c in ITEMS]
            wait_until(lambda: client.exists(*counts) == len(ITEMS), what="every item in Redis")
            wait_until(
                lambda: fetch(settings.database_url, _FLUSHED_SHARDS)[0][0] == settings.shards,
                what="every shard flushed",
            )
            # and the flusher's row filter build, which runs beside the first flushes, done (its lock
            # key gone: failed once, the lock in the first sample only)
            wait_until(
                lambda: (
                    not client.exists(rows.LOCK_KEY)
                    and all(
                        client.getrange(rows.rows_key(s), 1, 1) == b"\x01" for s in range(settings.shards)
                    )
                ),
                what="the row filters built",
            )
            # When the same load goes on, sampled every half second
            for _ in range(SAMPLES):
                samples.append(_held(client))
                time.sleep(EVERY_S)  # the sampling period
    finally:
        stop.set()
        loader.join()
        api.stop()
        flusher.terminate()
        flusher.wait(timeout=60)

    # Then Redis holds the same keys at every sample (the items' counts and HLLs, the shards' records:
    # one drain mark per shard), none per drain
    first = samples[0][0]
    changed = [(i, sorted(names ^ first)[:8]) for i, (names, _) in enumerate(samples) if names != first]
    assert not changed, f"keys that came or went (sample, keys): {changed[:3]}"
    marks = {n for n in first if n.endswith(":rec")}
    assert len(marks) <= settings.shards
    # And its memory is flat: the last third of the samples uses no more than the first third
    third = SAMPLES // 3
    early = sum(m for _, m in samples[:third]) / third
    late = sum(m for _, m in samples[-third:]) / third
    print(f"used_memory: first third {early:,.0f} B, last third {late:,.0f} B, keys {len(first)}")
    assert late <= early * 1.05, (early, late)
    # And every view counted once
    run_flusher_once(settings)
    assert sum(c["views"] for c in counters_in_postgres(settings.database_url).values()) == sent
