"""viral: Redis commands per 1,000 views of ONE content id, with the flushes before and after it."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from loadtest.flush import flush_once
from loadtest.httpc import Http
from loadtest.procs import log, poll_until
from loadtest.servers import AppServer, Backends
from loadtest.wrkrun import CONNECTIONS, run_wrk


def bench_viral(ns: argparse.Namespace, backends: Backends, real: AppServer, out: dict[str, Any]) -> None:
    n = ns.viral_views
    res: dict[str, Any] = {"views": n, "connections": CONNECTIONS}
    out["viral"] = res
    client = Http(real.port)
    try:
        # Flush whatever earlier benchmarks left, so the flush after the viral run writes only its item.
        pre = flush_once(backends)
        res["pre_flush"] = pre
        content_id = f"viral-{int(time.time())}-0"
        prefix = content_id[:-1]
        r = backends.redis
        r.config_resetstat()
        w = run_wrk(
            "post_view_n.lua",
            real.url,
            max(60, n // 1000),
            CONNECTIONS,
            [prefix, "1", str(n)],
            stop_when_threads_done=True,
        )
        real.alive()
        res["wrk"] = w
        polls = 0

        def counted() -> bool:
            nonlocal polls
            polls += 1
            status, body = client.request("GET", f"/api/v1/content/{content_id}/stats")
            return status == 200 and json.loads(body).get("views") == w.get("ok")

        drained = poll_until(counted, 60, 0.05)
        stats = r.info("commandstats")
        res["stats_polls"] = polls
        res["counted"] = bool(drained)
        # Cost of one /stats call in Redis commands, to leave the harness's polls out.
        r.config_resetstat()
        for _ in range(20):
            client.request("GET", f"/api/v1/content/{content_id}/stats")
        per_poll = commands(r.info("commandstats")) / 20
        total = commands(stats)
        res["redis_commands"] = total
        res["redis_commands_by_name"] = {
            k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if not harness_command(k)
        }
        res["redis_commands_per_stats_call"] = per_poll
        res["redis_commands_service"] = total - polls * per_poll
        res["commands_per_1000_views"] = (total - polls * per_poll) / n * 1000
        res["views_per_s"] = (w.get("ok") or 0) / w["duration_s"]
        res["valid"] = bool(drained) and w.get("ok") == n and w.get("err") == 0 and w["socket_errors"] == 0
        log(
            f"viral: {w.get('ok')} views at {res['views_per_s']:.0f}/s, {total} Redis commands "
            f"({res['commands_per_1000_views']:.2f} per 1,000 views)"
        )
        post = flush_once(backends)
        res["flush"] = post
        res["flush"]["items"] = 1
    finally:
        client.close()


def harness_command(name: str) -> bool:
    """The harness's own INFO / CONFIG RESETSTAT (Redis 7 names subcommands "config|resetstat")."""
    base = name.removeprefix("cmdstat_").split("|", 1)[0].lower()
    return base in ("info", "config")


def commands(stats: dict[str, Any]) -> int:
    return sum(int(v["calls"]) for k, v in stats.items() if not harness_command(k))
