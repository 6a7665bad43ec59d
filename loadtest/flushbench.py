"""flush: content_counters rows per second written by the flusher vs raw COPY + one upsert of as many rows.

Per round, --flush-items items (100,000 by default) get views and watch seconds in Redis through the
service's own view buffer (``ViewBuffer.add_many`` and ``drain_once``, as the api does), and then:

- ``flusher``: ``Flusher.drain()`` in this process, timed: capture every shard's batch in Redis, the
  ledger insert, COPY into a temporary table, the upsert into ``content_counters``, the ``content_daily``
  upsert, then ``finish_batch`` (idle TTLs given back to the flushed keys) — what ``engagementd flusher``
  does each pass;
- ``reference``: the same rows for other new ids — one ``content_counters`` row and one ``content_daily``
  row (today) per item, same columns and values — written with asyncpg alone: BEGIN, per table CREATE
  TEMPORARY TABLE, ``copy_records_to_table`` and one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``,
  COMMIT — the least writing those rows can cost Postgres.

Both insert new rows (fresh ids every round) into the same Postgres, from this process (pinned to the
CPU that Redis and Postgres share); the order alternates by round. Reported: median rows/s of each, the
median of the per-round ratios flusher/reference [>= 0.8], and each run's time. Every round checks that
Postgres holds exactly the views the round added.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import asyncpg

from daemon import db
from daemon.keys import COUNTERS, day_date, uv_day
from daemon.metrics import Metrics
from daemon.redis_client import make_redis
from daemon.settings import Settings
from daemon.store import Store
from daemon.views.buffer import ViewBuffer
from flusher.flusher import Flusher
from loadtest.procs import BenchError, log
from loadtest.servers import Backends
from lua import Scripts

ITEMS = 100_000
TARGET = 0.8
_COLUMNS = ("content_id", *COUNTERS)
_CREATE = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS bench_deltas (
    content_id text NOT NULL, {", ".join(f"{c} bigint NOT NULL" for c in COUNTERS)}
) ON COMMIT DELETE ROWS
"""
_CREATE_DAILY = """
CREATE TEMPORARY TABLE IF NOT EXISTS bench_daily (
    content_id text NOT NULL, day date NOT NULL, views bigint NOT NULL, watch_seconds bigint NOT NULL
) ON COMMIT DELETE ROWS
"""
_UPSERT_DAILY = """
INSERT INTO content_daily AS d (content_id, day, views, watch_seconds, updated_at)
SELECT content_id, day, views, watch_seconds, now() FROM bench_daily
ON CONFLICT (content_id, day) DO UPDATE SET
    views = d.views + EXCLUDED.views, watch_seconds = d.watch_seconds + EXCLUDED.watch_seconds,
    updated_at = now()
"""
_UPSERT = f"""
INSERT INTO content_counters AS c ({", ".join(_COLUMNS)}, updated_at)
SELECT {", ".join(_COLUMNS)}, now() FROM bench_deltas
ON CONFLICT (content_id) DO UPDATE SET
    {", ".join(f"{col} = c.{col} + EXCLUDED.{col}" for col in COUNTERS)}, updated_at = now()
"""


def _views(i: int) -> tuple[int, int]:
    """Views and watch seconds of the i-th item of a round: varied, known."""
    return 1 + i % 7, 30 * (i % 11)


async def _fill(settings: Settings, store: Store, metrics: Metrics, ids: list[str]) -> None:
    """Views and watch seconds of ``ids`` applied to Redis through the view buffer, as the api does."""
    buffer = ViewBuffer(settings, store, metrics)
    for start in range(0, len(ids), 10_000):
        chunk = ids[start : start + 10_000]
        views = [cid for i, cid in enumerate(chunk, start) for _ in range(_views(i)[0])]
        watched = [(cid, _views(i)[1]) for i, cid in enumerate(chunk, start) if _views(i)[1]]
        if not buffer.add_many(views, [c for c, _ in watched], [s for _, s in watched]):
            raise BenchError("flush: the view buffer refused the round's views")
        for _ in range(600):
            if await buffer.drain_once():
                break
            await asyncio.sleep(0.05)
        else:
            raise BenchError("flush: the views did not reach Redis within 30 s")


async def _reference(conn: asyncpg.Connection, ids: list[str]) -> float:
    """Seconds to COPY and upsert one content_counters and one content_daily row per id, in one
    transaction (the rows built before the clock starts)."""
    index = {name: i for i, name in enumerate(COUNTERS)}
    today = day_date(uv_day())
    rows, daily = [], []
    for i, cid in enumerate(ids):
        values = [0] * len(COUNTERS)
        values[index["views"]], values[index["watch_seconds"]] = _views(i)
        rows.append((cid, *values))
        daily.append((cid, today, *_views(i)))
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute(_CREATE)
        await conn.copy_records_to_table("bench_deltas", records=rows, columns=_COLUMNS)
        await conn.execute(_UPSERT)
        await conn.execute(_CREATE_DAILY)
        await conn.copy_records_to_table(
            "bench_daily", records=daily, columns=("content_id", "day", "views", "watch_seconds")
        )
        await conn.execute(_UPSERT_DAILY)
    return time.perf_counter() - started


async def _rounds(ns: argparse.Namespace, settings: Settings, res: dict[str, Any]) -> None:
    metrics = Metrics()
    redis = make_redis(settings)
    pool = await db.create_pool(settings)
    scripts = Scripts.load()
    store = Store(settings, redis, scripts, db.provided(pool), metrics)
    flusher = Flusher(settings, redis, pool, scripts, metrics)
    n = ns.flush_items
    want = sum(_views(i)[0] for i in range(n))
    try:
        await flusher.drain()  # whatever earlier parts left
        for r in range(ns.runs):
            row: dict[str, Any] = {"round": r + 1}
            order = ("flusher", "reference") if r % 2 == 0 else ("reference", "flusher")
            for kind in order:
                ids = [f"fl{kind[0]}-{r}-{i}" for i in range(n)]
                if kind == "flusher":
                    await _fill(settings, store, metrics, ids)
                    started = time.perf_counter()
                    _, rows = await flusher.drain()
                    seconds = time.perf_counter() - started
                    if rows != n:
                        raise BenchError(f"flush: the flusher wrote {rows} rows, not {n}")
                else:
                    async with pool.acquire() as conn:
                        seconds = await _reference(conn, ids)
                async with pool.acquire() as conn:
                    got = await conn.fetchval(
                        "SELECT coalesce(sum(views), 0) FROM content_counters WHERE content_id LIKE $1",
                        f"fl{kind[0]}-{r}-%",
                    )
                if got != want:
                    raise BenchError(f"flush: {kind} round {r + 1}: Postgres holds {got} views, not {want}")
                row[kind] = {"seconds": round(seconds, 3), "rows_per_s": n / seconds}
                log(f"flush round {r + 1} {kind}: {n} rows in {seconds:.2f} s, {n / seconds:,.0f} rows/s")
            row["ratio"] = row["flusher"]["rows_per_s"] / row["reference"]["rows_per_s"]
            res["rounds"].append(row)
    finally:
        await redis.aclose()
        await pool.close()


def bench_flush(ns: argparse.Namespace, backends: Backends, out: dict[str, Any]) -> None:
    res: dict[str, Any] = {"items": ns.flush_items, "target": TARGET, "rounds": []}
    out["flush"] = res
    settings = Settings.from_env(backends.env)
    asyncio.run(_rounds(ns, settings, res))
    rounds = res["rounds"]
    if not rounds:
        raise BenchError("flush: no round ran")
    for kind in ("flusher", "reference"):
        res[f"{kind}_median_rows_per_s"] = statistics.median(row[kind]["rows_per_s"] for row in rounds)
    res["ratio_median"] = statistics.median(row["ratio"] for row in rounds)
    res["valid"] = True
