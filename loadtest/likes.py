"""likes: requests/sec of like/unlike by many users on the real api vs a bare route and a naive endpoint.

Three servers, each one granian process (ASGI, uvloop, one worker) pinned to the server CPU:

- ``bare``: loadtest/bare_app.py's ``POST|DELETE /api/v1/content/{id}/like`` (a constant 200 JSON
  body; no token check, no Redis): the ceiling of Starlette + granian on this machine;
- ``naive``: loadtest/naive_likes_app.py, the straightforward implementation (PyJWT decode and one
  awaited EVALSHA of lua/set_reaction.lua per request);
- ``real``: ``engagementd api`` with ENGAGEMENT_RATE_LIMITS="" (no rate limit);
- ``limited``: ``engagementd api`` with the like and dislike rate limits on, as shipped (one sliding-window
  check per request, in the same script call as the reaction on a single Redis) but at 1,000,000 per
  60 s, so that no request is refused (at the shipped 100 per 60 s, 2,000 users at ~10,000 req/s would
  be refused after ~20 s, and a 429 is cheaper than a like).

wrk/post_like.lua sends, on 128 connections (--like-connections), POST or DELETE like at random with a
random token of 2,000 users and a random content id of 1,000. Rounds measure the three in turn, the order
rotating every round; reported: median req/s and CPU share of each, and the medians of the per-round
ratios real/bare and limited/bare [>= 0.5] and real/naive [>= 1.5], and each server's latency p50 / p99
(wrk --latency, at the rate wrk drove it: saturation). A round with any non-2xx answer or socket error is
invalid. After the rounds, Redis must agree with itself: the live like counts of the ids equal the liked
states.
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib
from pathlib import Path
from typing import Any

from loadtest.procs import BenchError, log
from loadtest.servers import AppServer, Backends
from loadtest.wrkrun import PACED_CONNECTIONS, WARMUP_S, half_peak_pace_ms, run_wrk

USERS = 2_000
# wrk connections of the likes runs (--like-connections): many users at once. At 64 the real server is
# latency-bound, idle ~20% of its CPU waiting for Redis round trips (Redis shares CPU 1 with wrk), while
# the bare route is CPU-bound; at 128 the real one is busy 86% and the bare one is not slowed (at 256 it
# is, by ~10%). See loadtest/README.md.
CONNECTIONS = 128
LIKE_POOL = 1_000
LIKE_PREFIX = "lk-"
KINDS = ("bare", "naive", "real", "limited")
LIMITED = "like=1000000/60s,dislike=1000000/60s"
TARGET_BARE = 0.5
TARGET_NAIVE = 1.5


def write_tokens(path: Path, secret: str, users: int = USERS, ttl_s: int = 86_400) -> Path:
    """One HS256 token per line for users u-0 .. u-<users-1>, signed with ``secret``."""
    import jwt

    now = int(time.time())
    path.write_text(
        "".join(
            jwt.encode({"sub": f"u-{i}", "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256") + "\n"
            for i in range(users)
        )
    )
    return path


def bench_likes(ns: argparse.Namespace, backends: Backends, workdir: Path, out: dict[str, Any]) -> None:
    env = {**backends.env, "ENGAGEMENT_RATE_LIMITS": ""}
    tokens = write_tokens(workdir / "like-tokens.txt", env["ENGAGEMENT_JWT_SECRET"])
    args = [str(tokens), LIKE_PREFIX, str(LIKE_POOL)]
    res: dict[str, Any] = {
        "connections": ns.like_connections,
        "users": USERS,
        "pool": LIKE_POOL,
        "duration_s": ns.duration,
        "bare_route": "bare_app.py POST|DELETE /api/v1/content/{contentId}/like: 200, constant JSON",
        "rounds": [],
    }
    out["likes"] = res
    servers: dict[str, AppServer] = {}
    try:
        for kind in KINDS:
            kind_env = {**env, "ENGAGEMENT_RATE_LIMITS": LIMITED} if kind == "limited" else env
            servers[kind] = AppServer(kind, kind_env, workdir)
        for kind, server in servers.items():
            log(f"likes: warming up {kind}")
            run_wrk("post_like.lua", server.url, WARMUP_S, ns.like_connections, args)
        for r in range(ns.runs):
            order = [KINDS[(r + i) % len(KINDS)] for i in range(len(KINDS))]
            row: dict[str, Any] = {"round": r + 1, "order": order}
            for kind in order:
                redis_cpu = _redis_cpu_s(backends)
                w = servers[kind].measure("post_like.lua", ns.duration, ns.like_connections, args)
                # Redis's CPU per request (it shares the client CPU with wrk): where a like's time goes
                w["redis_cpu_us_per_request"] = (
                    (_redis_cpu_s(backends) - redis_cpu) / w["requests"] * 1e6 if w["requests"] else None
                )
                row[kind] = w
                log(
                    f"likes round {r + 1} {kind}: {w['requests_per_s']:.0f} req/s, non-2xx {w['non_2xx']}, "
                    f"socket errors {w['socket_errors']}, server CPU share {w['server_cpu_share']:.2f}, "
                    f"{w['ok_per_server_cpu_s'] or 0:.0f} req per CPU-second, "
                    f"p50 {w.get('latency_p50_ms', 0):.2f} ms, p99 {w.get('latency_p99_ms', 0):.2f} ms, "
                    f"Redis {w['redis_cpu_us_per_request'] or 0:.1f} CPU-us per request"
                )
            row["ratio_limited_bare"] = row["limited"]["requests_per_s"] / row["bare"]["requests_per_s"]
            for ref in ("bare", "naive"):
                row[f"ratio_{ref}"] = row["real"]["requests_per_s"] / row[ref]["requests_per_s"]
                if row["real"]["ok_per_server_cpu_s"] and row[ref]["ok_per_server_cpu_s"]:
                    row[f"cpu_ratio_{ref}"] = (
                        row["real"]["ok_per_server_cpu_s"] / row[ref]["ok_per_server_cpu_s"]
                    )
            res["rounds"].append(row)
        # latency at about half the peak: paced requests (the goal: p99 under 10 ms)
        res["paced"] = {}
        for kind in ("real", "limited"):
            peak = statistics.median(row[kind]["requests_per_s"] for row in res["rounds"])
            pace_ms = half_peak_pace_ms(peak, PACED_CONNECTIONS)
            w = servers[kind].measure("post_like.lua", ns.duration, PACED_CONNECTIONS, [*args, str(pace_ms)])
            res["paced"][kind] = {"peak_rps": peak, "pace_ms": pace_ms, **w}
            log(
                f"likes paced {kind} ({pace_ms} ms x {PACED_CONNECTIONS}): "
                f"{w['requests_per_s']:.0f} req/s, "
                f"p50 {w.get('latency_p50_ms', 0):.2f} ms, p99 {w.get('latency_p99_ms', 0):.2f} ms"
            )
    finally:
        for server in servers.values():
            server.stop()
    _summarise(res)
    res["consistency"] = consistency(backends)
    res["valid"] = res["valid"] and res["consistency"]["ok"]


def _redis_cpu_s(backends: Backends) -> float:
    cpu = backends.redis.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def _summarise(res: dict[str, Any]) -> None:
    rounds = res["rounds"]
    if not rounds:
        raise BenchError("likes: no round ran")
    for kind in KINDS:
        res[f"{kind}_rps"] = [row[kind]["requests_per_s"] for row in rounds]
        res[f"{kind}_median_rps"] = statistics.median(res[f"{kind}_rps"])
        res[f"{kind}_median_cpu_share"] = statistics.median(row[kind]["server_cpu_share"] for row in rounds)
        redis_us = [row[kind]["redis_cpu_us_per_request"] for row in rounds]
        res[f"{kind}_median_redis_cpu_us"] = statistics.median(redis_us) if None not in redis_us else None
        for pct in ("p50", "p99"):
            values = [row[kind][f"latency_{pct}_ms"] for row in rounds if f"latency_{pct}_ms" in row[kind]]
            res[f"{kind}_median_{pct}_ms"] = statistics.median(values) if values else None
    res["ratio_limited_bare_median"] = statistics.median(row["ratio_limited_bare"] for row in rounds)
    for ref in ("bare", "naive"):
        res[f"ratio_{ref}_median"] = statistics.median(row[f"ratio_{ref}"] for row in rounds)
        cpu = [row[f"cpu_ratio_{ref}"] for row in rounds if f"cpu_ratio_{ref}" in row]
        res[f"cpu_ratio_{ref}_median"] = statistics.median(cpu) if cpu else None
    res["valid"] = all(
        row[k]["non_2xx"] == 0 and row[k]["socket_errors"] == 0 for row in rounds for k in KINDS
    )


def consistency(backends: Backends) -> dict[str, Any]:
    """The live like counts of the benchmark's ids against the liked states in Redis (must be equal)."""
    # like states are keys eng:{s:N}:lk:<content_id>|<user_id> (daemon/keys.py); nothing evicts them here
    names = list(backends.redis.scan_iter(match=f"eng:{{s:*}}:lk:{LIKE_PREFIX}*", count=5000))
    liked = 0
    for i in range(0, len(names), 5000):
        pipe = backends.redis.pipeline(transaction=False)
        for name in names[i : i + 5000]:
            pipe.get(name)
        liked += sum(1 for v in pipe.execute() if v == "1")
    pipe = backends.redis.pipeline(transaction=False)
    for i in range(LIKE_POOL):
        cid = f"{LIKE_PREFIX}{i}"
        pipe.hget(f"eng:{{s:{zlib.crc32(cid.encode()) % backends.shards}}}:c:{cid}", "likes")
    counted = sum(int(v) for v in pipe.execute() if v is not None)
    log(f"likes: {counted} likes counted in Redis, {liked} liked states")
    return {"likes_counted": counted, "liked_states": liked, "ok": counted == liked}
