"""reads: items per second of stats through the batch endpoint (50 ids a request) against the single
one, on the same api in the same run; and the latency of trending reads, of a batch and of daily ranges.

The api's Redis holds POOL items (their counts seeded by views); wrk reads random ones of them with
``get_stats.lua`` (one item a request) and ``post_stats_batch.lua`` (BATCH_SIZE a request), in turn,
the order swapped every round. Reported per round and as medians: items/s of each, and the ratio
batch / single [goal >= 10]. Then, sequentially on one connection (each request timed alone, after a
warm-up): p50 / p99 of a 50-id batch, of ``GET /api/v1/trending`` for each window with the trending
cache off (every read runs the per-shard scripts), and of a daily range of 30 and of 366 days.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loadtest.bodies import ingest_token
from loadtest.cold_stats import percentile
from loadtest.httpc import Http
from loadtest.procs import BenchError, log
from loadtest.servers import AppServer, Backends
from loadtest.wrkrun import CONNECTIONS

POOL = 1_000
BATCH_SIZE = 50
TIMED = 300  # sequential requests per latency figure


def bench_reads(ns: argparse.Namespace, backends: Backends, workdir: Path, out: dict[str, Any]) -> None:
    env = {**backends.env, "ENGAGEMENT_TRENDING_CACHE_MS": "0"}
    res: dict[str, Any] = {"pool": POOL, "batch_size": BATCH_SIZE, "connections": CONNECTIONS, "rounds": []}
    out["reads"] = res
    api = AppServer("real", env, workdir)
    try:
        _seed(api, backends.env["ENGAGEMENT_JWT_SECRET"])
        for r in range(ns.runs):
            res["rounds"].append(_round(ns, r, api))
        for key in ("single_items_per_s", "batch_items_per_s", "ratio"):
            res[f"{key}_median"] = statistics.median(row[key] for row in res["rounds"])
        res["latency"] = _latencies(api)
        res["valid"] = all(row["valid"] for row in res["rounds"])
    finally:
        api.stop()


def _seed(api: AppServer, secret: str) -> None:
    """Every item of the pool viewed (so Redis holds its counts), then wait until they are there."""
    http = Http(api.port)
    try:
        body = json.dumps([{"content_id": f"rd-{i}"} for i in range(POOL)]).encode()
        headers = {"Authorization": f"Bearer {ingest_token(secret)}", "Content-Type": "application/json"}
        status, text = http.request("POST", "/api/v1/views/batch", body, headers)
        if status != 202:
            raise BenchError(f"reads: seeding views answered {status}: {text[:200]!r}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, text = http.request("GET", f"/api/v1/content/rd-{POOL - 1}/stats")
            if status == 200 and json.loads(text)["views"] >= 1:
                return
            time.sleep(0.05)  # polling the condition (views drain every 100 ms)
        raise BenchError("reads: the seeded views never reached Redis")
    finally:
        http.close()


def _round(ns: argparse.Namespace, r: int, api: AppServer) -> dict[str, Any]:
    row: dict[str, Any] = {"round": r + 1}
    runs = [
        ("single", "get_stats.lua", ["rd-", str(POOL)], 1),
        ("batch", "post_stats_batch.lua", ["rd-", str(POOL), str(BATCH_SIZE)], BATCH_SIZE),
    ]
    if r % 2:
        runs.reverse()
    for kind, script, args, per_request in runs:
        w = api.measure(script, ns.duration, CONNECTIONS, args)
        row[kind] = w
        row[f"{kind}_items_per_s"] = w["requests_per_s"] * per_request
        items = row[f"{kind}_items_per_s"]
        log(f"reads round {r + 1} {kind}: {w['requests_per_s']:.0f} req/s = {items:.0f} items/s")
    row["ratio"] = row["batch_items_per_s"] / row["single_items_per_s"]
    row["valid"] = all(row[k]["non_2xx"] == 0 == row[k]["socket_errors"] for k in ("single", "batch"))
    return row


def _days_ago(n: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=n)).isoformat()


def _latencies(api: AppServer) -> dict[str, Any]:
    """p50 / p99 (µs) of sequential requests on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    ids = json.dumps({"content_ids": [f"rd-{i}" for i in range(BATCH_SIZE)]}).encode()
    cases = {
        "batch_50": ("POST", "/api/v1/stats/batch", ids),
        **{f"trending_{w}": ("GET", f"/api/v1/trending?window={w}", None) for w in ("1h", "24h", "7d")},
        "daily_30_days": ("GET", "/api/v1/content/rd-0/stats/daily", None),
        "daily_366_days": ("GET", f"/api/v1/content/rd-0/stats/daily?from={_days_ago(365)}", None),
    }
    out: dict[str, Any] = {}
    try:
        for name, (method, path, body) in cases.items():
            times = []
            for i in range(TIMED + 20):
                headers = {"Content-Type": "application/json"} if body else {}
                started = time.perf_counter_ns()
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                elapsed = time.perf_counter_ns() - started
                if resp.status != 200:
                    raise BenchError(f"reads: {method} {path} answered {resp.status}")
                if i >= 20:  # the first ones warm up
                    times.append(elapsed // 1000)
            times.sort()
            out[name] = {"p50_us": percentile(times, 50), "p99_us": percentile(times, 99), "requests": TIMED}
            log(f"reads {name}: p50 {out[name]['p50_us']:.0f} µs, p99 {out[name]['p99_us']:.0f} µs")
    finally:
        conn.close()
    return out
