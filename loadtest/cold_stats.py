"""The cold part's figures (loadtest/cold.py): Postgres statements counted with pg_stat_statements
and classified, metric samples read from /metrics, latencies summarised into p50 / p99 / requests/s and
medians over rounds."""

from __future__ import annotations

import asyncio
import math
import re
import statistics
from collections import Counter
from typing import Any

from loadtest.httpc import METRIC_LINE
from loadtest.procs import BenchError, log
from loadtest.servers import Backends

RESET = ("select pg_advisory_unlock_all()", "close all", "unlisten *", "reset all")
_STATEMENTS = """
SELECT query, calls, total_exec_time FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query NOT LIKE '%pg_stat_statements%'
"""
_SESSIONS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


class Statements:
    """pg_stat_statements of the service database, read on the harness's own connection."""

    def __init__(self, backends: Backends) -> None:
        import asyncpg

        backends.pg.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        log("cold: restarting the private Postgres with pg_stat_statements")
        backends.pg.restart()
        backends.pg.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname="engagement")
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(backends.pg.dsn("engagement")))

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        """(calls, server execution time in microseconds) per statement."""
        rows = self.loop.run_until_complete(self.conn.fetch(_STATEMENTS))
        calls: Counter[str] = Counter()
        exec_us: Counter[str] = Counter()
        for r in rows:  # the same text may be recorded per user or top-level flag: summed
            calls[r["query"]] += int(r["calls"])
            exec_us[r["query"]] += round(float(r["total_exec_time"]) * 1000)
        return calls, exec_us

    def sessions(self) -> set[int]:
        """The backend pids of the service database's other client connections (the api's pool)."""
        rows = self.loop.run_until_complete(self.conn.fetch(_SESSIONS))
        return {int(r["pid"]) for r in rows}

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def classify(delta: Counter[str]) -> dict[str, int]:
    """Statements of a phase: ``acquires`` (the pool's reset: one per connection given back),
    ``selects`` (the api's queries), ``other``."""
    out = {"acquires": 0, "selects": 0, "other": 0}
    for query, calls in delta.items():
        text = " ".join(query.lower().split()).rstrip(";")
        if text == RESET[0]:
            out["acquires"] += calls
        elif text in RESET[1:]:
            continue  # the same reset, statement by statement
        elif text.startswith("select"):
            out["selects"] += calls
        else:
            out["other"] += calls
    return out


def labelled(body: bytes, name: str) -> dict[str, float]:
    """The samples of one metric from /metrics, by their ``kind`` label ("" without one)."""
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        m = METRIC_LINE.match(line)
        if m and m.group(1) == name:
            kind = re.search(r'kind="([^"]*)"', line)
            out[kind.group(1) if kind else ""] = float(m.group(2))
    return out


def new_accumulator() -> dict[str, Any]:
    return {
        "latencies_ns": [],
        "bad": 0,
        "acquires": 0,
        "selects": 0,
        "other": 0,
        "evicted_keys": 0,
        "keys_missing": 0,
        "retired": 0,
        "select_exec_us": 0,
        "reset_exec_us": 0,
        "statements": Counter(),
    }


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def summary_of(acc: dict[str, Any]) -> dict[str, Any]:
    lat = sorted(acc["latencies_ns"])
    n = len(lat)
    mean = sum(lat) / n
    return {
        "requests": n,
        "p50_us": percentile(lat, 50) / 1e3,
        "p99_us": percentile(lat, 99) / 1e3,
        "mean_us": mean / 1e3,
        "max_us": lat[-1] / 1e3,
        "requests_per_s": 1e9 / mean,  # back to back on one connection
        "bad": acc["bad"],
        "acquires": acc["acquires"],
        "selects": acc["selects"],
        "other": acc["other"],
        "retired": acc["retired"],
        # Postgres's own execution time (pg_stat_statements), without the round trips
        "select_exec_us_per_request": acc["select_exec_us"] / n,
        "reset_exec_us_per_request": acc["reset_exec_us"] / n,
        "acquires_per_request": (acc["acquires"] + acc["retired"]) / n,
        "selects_per_request": acc["selects"] / n,
        "evicted_keys": acc["evicted_keys"],
        "keys_missing": acc["keys_missing"],
        "statements": dict(acc["statements"]),
    }


# The per-kind figures: (name in the result, field of a round's hot/cold summary).
FIGURES = ("p50_us", "p99_us", "requests_per_s")


def summarise(res: dict[str, Any]) -> None:
    rounds = res["rounds"]
    if not rounds:
        raise BenchError("cold: no round ran")
    valid = True
    for kind in ("stats", "like"):
        k: dict[str, Any] = {}
        for temp in ("hot", "cold"):
            for fig in FIGURES:
                k[f"{temp}_{fig}_median"] = statistics.median(row[kind][temp][fig] for row in rounds)
        k["p50_cold_minus_hot_us_median"] = statistics.median(
            row[kind]["p50_cold_minus_hot_us"] for row in rounds
        )
        cold = [row[kind]["cold"] for row in rounds]
        hot = [row[kind]["hot"] for row in rounds]
        k["cold_acquires_per_request"] = sum(c["acquires"] + c["retired"] for c in cold) / sum(
            c["requests"] for c in cold
        )
        k["cold_select_exec_us_per_request"] = statistics.median(
            c["select_exec_us_per_request"] for c in cold
        )
        k["cold_reset_exec_us_per_request"] = statistics.median(c["reset_exec_us_per_request"] for c in cold)
        k["connections_retired"] = sum(c["retired"] for c in cold) + sum(h["retired"] for h in hot)
        k["cold_selects_per_request"] = sum(c["selects"] for c in cold) / sum(c["requests"] for c in cold)
        k["hot_statements"] = sum(h["acquires"] + h["selects"] + h["other"] for h in hot)
        k["bad_answers"] = sum(c["bad"] for c in cold) + sum(h["bad"] for h in hot)
        k["hot_keys_missing"] = sum(h["keys_missing"] for h in hot)
        reads = sum(row[kind]["metrics_delta"].get("reads", 0) for row in rounds)
        read_s = sum(row[kind]["metrics_delta"].get("read_seconds", 0) for row in rounds)
        # engagement_cold_load_*: the store's loads (a like's); the stats route reads Postgres itself
        k["cold_load_reads_per_cold_request"] = reads / sum(c["requests"] for c in cold)
        k["cold_load_mean_us"] = read_s / reads * 1e6 if reads else None
        for name in ("loads_counts", "loads_like", "hits_counts", "hits_like"):
            k[f"metric_{name}"] = sum(row[kind]["metrics_delta"].get(name, 0) for row in rounds)
        k["cold_statements"] = dict(sum((Counter(c["statements"]) for c in cold), Counter()))
        # One Postgres read: one pool acquire and one SELECT per cold request (a stats read's own; a
        # first like's: the item's counts, the row filter proving the pair new), none per hot one.
        k["one_read_per_cold_request"] = all(
            c["acquires"] + c["retired"] == c["requests"]
            and c["selects"] == c["requests"]
            and c["other"] == 0
            for c in cold
        )
        k["valid"] = (
            k["one_read_per_cold_request"]
            and k["hot_statements"] == 0
            and k["bad_answers"] == 0
            and k["hot_keys_missing"] == 0
        )
        valid = valid and k["valid"]
        res[kind] = k
    res["valid"] = valid and res.get("consistency", {}).get("ok", False)
