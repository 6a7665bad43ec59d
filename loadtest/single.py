"""single: requests/sec of one-view POSTs on the real api vs the bare app, and the exact-count check."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from loadtest.httpc import Http, metric, metrics, wait_drained
from loadtest.procs import BenchError, log
from loadtest.servers import AppServer, Backends
from loadtest.wrkrun import CONNECTIONS, PACED_CONNECTIONS, WARMUP_S, half_peak_pace_ms, run_wrk

SINGLE_POOL = 10_000
EXACT_VIEWS = 50_000


def bench_single(
    ns: argparse.Namespace, env: dict[str, str], backends: Backends | None, workdir: Path, out: dict[str, Any]
) -> None:
    res: dict[str, Any] = {
        "connections": CONNECTIONS,
        "pool": SINGLE_POOL,
        "duration_s": ns.duration,
        "rounds": [],
    }
    out["single"] = res
    bare = AppServer("bare", env, workdir)
    real: AppServer | None = None
    if backends is not None:
        try:
            real = AppServer("real", env, workdir)
        except BenchError as exc:
            out["errors"]["api"] = str(exc)
            log(f"engagementd api failed to start, measuring the bare app only: {exc}")
    client = Http(real.port) if real else None
    try:
        for server in (bare, real):
            if server is not None:
                log(f"warming up {server.kind}")
                run_wrk("post_view.lua", server.url, WARMUP_S, CONNECTIONS, ["warm-", str(SINGLE_POOL)])
        for r in range(ns.runs):
            res["rounds"].append(_round(ns, r, bare, real, client, backends))
        _summarise_bare(res)
        if real is not None:
            assert client is not None and backends is not None
            _summarise_real(res)
            # latency at about half the peak: paced requests (the goal: p99 under 10 ms)
            pace_ms = half_peak_pace_ms(res["real_median_rps"], PACED_CONNECTIONS)
            w = real.measure(
                "post_view.lua", ns.duration, PACED_CONNECTIONS, ["paced-", str(SINGLE_POOL), str(pace_ms)]
            )
            res["paced"] = {"peak_rps": res["real_median_rps"], "pace_ms": pace_ms, **w}
            log(
                f"single paced ({pace_ms} ms x {PACED_CONNECTIONS}): "
                f"{w['requests_per_s']:.0f} req/s, "
                f"p50 {w.get('latency_p50_ms', 0):.2f} ms, p99 {w.get('latency_p99_ms', 0):.2f} ms"
            )
            res["exact_count"] = exact_count(real, client, backends)
            res["valid"] = res["valid"] and res["exact_count"]["ok"]
    finally:
        if client:
            client.close()
        for server in (real, bare):
            if server is not None:
                server.stop()


def _round(
    ns: argparse.Namespace,
    r: int,
    bare: AppServer,
    real: AppServer | None,
    client: Http | None,
    backends: Backends | None,
) -> dict[str, Any]:
    """One round: bare and real in turn (the order swaps every round); the real one's counts checked."""
    order = [bare, real] if r % 2 == 0 else [real, bare]
    row: dict[str, Any] = {"round": r + 1}
    for server in order:
        if server is None:
            continue
        prefix = f"s{r}-"
        before = metric(metrics(client), "engagement_views_accepted") if server is real else 0.0
        w = server.measure("post_view.lua", ns.duration, CONNECTIONS, [prefix, str(SINGLE_POOL)])
        row[server.kind] = w
        log(
            f"round {r + 1} {server.kind}: {w['requests_per_s']:.0f} req/s, non-2xx {w['non_2xx']}, "
            f"socket errors {w['socket_errors']}, server CPU share {w['server_cpu_share']:.2f}, "
            f"{w['ok_per_server_cpu_s'] or 0:.0f} req per CPU-second"
        )
        if server is real:
            assert client is not None and backends is not None
            after = metric(wait_drained(client), "engagement_views_accepted")
            counted = backends.views_of(f"{prefix}{i}" for i in range(SINGLE_POOL))
            accepted = int(after - before)
            w["counted_in_redis"] = counted
            w["accepted_by_api"] = accepted
            # wrk stops its clock with up to -c requests in flight: the service counts those,
            # wrk does not. Redis must hold exactly what the api accepted.
            w["in_flight_at_stop"] = counted - w["ok_2xx"]
            w["count_ok"] = counted == accepted and 0 <= counted - w["ok_2xx"] <= CONNECTIONS
    if "real" in row:
        row["ratio"] = row["real"]["requests_per_s"] / row["bare"]["requests_per_s"]
        if row["real"]["ok_per_server_cpu_s"] and row["bare"]["ok_per_server_cpu_s"]:
            row["cpu_ratio"] = row["real"]["ok_per_server_cpu_s"] / row["bare"]["ok_per_server_cpu_s"]
    return row


def _summarise_bare(res: dict[str, Any]) -> None:
    bare_rps = [row["bare"]["requests_per_s"] for row in res["rounds"]]
    res["bare_median_cpu_share"] = statistics.median(row["bare"]["server_cpu_share"] for row in res["rounds"])
    res["bare_median_rps"] = statistics.median(bare_rps)
    res["bare_rps"] = bare_rps
    res["valid"] = all(
        row["bare"]["non_2xx"] == 0 and row["bare"]["socket_errors"] == 0 for row in res["rounds"]
    )


def _summarise_real(res: dict[str, Any]) -> None:
    real_rps = [row["real"]["requests_per_s"] for row in res["rounds"]]
    res["real_rps"] = real_rps
    res["real_median_rps"] = statistics.median(real_rps)
    res["real_median_cpu_share"] = statistics.median(row["real"]["server_cpu_share"] for row in res["rounds"])
    res["ratio_median"] = statistics.median(row["ratio"] for row in res["rounds"])
    cpu_ratios = [row["cpu_ratio"] for row in res["rounds"] if "cpu_ratio" in row]
    # Requests per CPU-second of the server: less sensitive to other load on a shared machine.
    res["cpu_ratio_median"] = statistics.median(cpu_ratios) if cpu_ratios else None
    res["valid"] = res["valid"] and all(
        row["real"]["non_2xx"] == 0 and row["real"]["socket_errors"] == 0 and row["real"]["count_ok"]
        for row in res["rounds"]
    )


def exact_count(real: AppServer, client: Http, backends: Backends) -> dict[str, Any]:
    """One run of exactly N views over the same pool, nothing in flight at the end: an exact match."""
    log(f"exact-count run: {EXACT_VIEWS} views over {SINGLE_POOL} ids")
    w = run_wrk(
        "post_view_n.lua",
        real.url,
        120,
        CONNECTIONS,
        ["x-", str(SINGLE_POOL), str(EXACT_VIEWS)],
        stop_when_threads_done=True,
    )
    wait_drained(client)
    counted = backends.views_of(f"x-{i}" for i in range(SINGLE_POOL))
    return {
        "sent": w.get("sent"),
        "answered_202": w.get("ok"),
        "other_status": w.get("err"),
        "counted_in_redis": counted,
        "ok": w.get("ok") == EXACT_VIEWS and counted == EXACT_VIEWS and w.get("err") == 0,
    }
