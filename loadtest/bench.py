"""The load benchmark of one api process, with private Redis and Postgres, in one command.

    python -m loadtest.bench [--runs 5] [--duration 10]
                             [--only single|likes|flush|bulk|bulk-users|viral|bulk-matrix|consume|reads|cold
                                     |live]
                             [--bulk-items mixed|ids|users] [--bulk-columnar] [--bulk-ids uniform|zipf]
                             [--viral-views 200000]
                             [--cold-requests 2000] [--cold-rate 500] [--live-clients 5000] [--live-items 100]
                             [--live-rounds 10] [--live-interval-ms 1000] [--live-client-procs 1]

What it measures (targets in brackets; loadtest/README.md explains each):

single  requests/sec of ``POST /api/v1/content/{id}/views`` (no body, ~10,000 ids) on the real api vs
        the bare Starlette app of loadtest/bare_app.py, both served by granian (ASGI, uvloop, one
        worker) pinned to CPU 0 and driven by wrk pinned to CPU 1; bare and real alternate for --runs
        rounds; medians and the median of the per-round ratios [>= 0.85]. Every real round checks
        the count in Redis against wrk's 2xx count, and one exact-count run (fixed N, nothing in
        flight at the end) must match exactly.
likes   requests/sec of ``POST|DELETE /api/v1/content/{id}/like`` with Bearer HS256 tokens of 2,000
        users over 1,000 ids (ENGAGEMENT_RATE_LIMITS="") on the real api vs the bare app's like route
        and vs loadtest/naive_likes_app.py (PyJWT decode + one awaited EVALSHA of set_reaction.lua per
        request); the three alternate for --runs rounds; medians of the per-round ratios real/bare
        [>= 0.5] and real/naive [>= 1.5]. No non-2xx allowed; Redis's like counts = liked states.
flush   content_counters rows/s of the flusher (capture, COPY, upsert, content_daily, finish; in process)
        vs raw COPY + one upsert of as many rows with asyncpg, same Postgres, fresh ids, --flush-items per
        round [>= 0.8] (loadtest/flushbench.py).
bulk    events/s through ``POST /api/v1/views/batch``: 1,000-event msgpack bodies; by default ids
        uniform from 100,000 and mixed events (some user_id / watch_seconds); --bulk-items ids sends
        content ids only, --bulk-items users every event with a user_id (100,000 users, 200 items),
        --bulk-columnar sends objects of columns; --bulk-ids zipf draws ids Zipf-like (s = 1.1) from 1,000,000
        [>= 1,000,000 events/s into one process]. ``--only bulk-matrix``: all four shapes.
bulk-users  the same with issue 19's shape: every event a user_id (100,000 users, 200 items), the
        bodies as objects of columns [>= 1,000,000 events/s]
viral   N views of ONE content id: Redis commands per 1,000 views from INFO commandstats (every command,
        those run inside Lua scripts included; the harness's INFO/CONFIG and its /stats polls left out)
        [<= 10]; then ``engagementd flusher --once``: content_counters rows written for that item
        (pg_stat_user_tables n_tup_ins + n_tup_upd) [1 per item per flush].
consume events/s through one ``engagementd consume`` process into Redis (media_started events pre-produced
        to the mock cluster) vs a bare confluent-kafka loop that only decodes them; medians and the
        median per-round ratio [>= 100,000 events/s]. Every run must count exactly N views in Redis.
cold    latency (p50, p99; requests/s on one connection) of ``GET /api/v1/content/{id}/stats`` with a
        Bearer token and of ``POST /api/v1/content/{id}/like`` on hot items (their counts and like-state
        keys in Redis) vs cold ones (those keys deleted just before, as an eviction would; Postgres has
        them: a flush ran), sequential requests at a fixed pace, timed one by one; medians over --runs.
        Postgres reads counted with pg_stat_statements (the part restarts the private Postgres with it):
        [exactly one pool acquire per cold request (stats: 1 SELECT; like: 2, counts and state, on one
        connection), none per hot one]; after a last flush every measured item has exactly 2 likes.
live    (``--only live``; not run by default) WebSocket clients of ``GET /api/v1/content/{id}/live``
        (5,000 on 100 items) on one api while views arrive in rounds: delay from a view batch to each
        client (p50 / p99 / max) [>= 99% within 2 x ENGAGEMENT_LIVE_INTERVAL_MS, none missed], the api
        worker's RSS per connection, Redis commands/s with 0, 1, 100 and 5,000 clients.

Everything is bound to 127.0.0.1; every child runs in its own process group and is killed on exit.
The harness itself, Redis, Postgres, wrk and the flusher are pinned to CPU 1 so CPU 0 is the server's.
Output: a table on stdout and loadtest/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtest.bodies import IDS, ITEMS
from loadtest.bulk import bench_bulk, bench_bulk_matrix
from loadtest.cold import RATE as COLD_RATE
from loadtest.cold import REQUESTS as COLD_REQUESTS
from loadtest.cold import bench_cold
from loadtest.consume import bench_consume
from loadtest.flushbench import ITEMS as FLUSH_ITEMS
from loadtest.flushbench import bench_flush
from loadtest.likes import CONNECTIONS as LIKE_CONNECTIONS
from loadtest.likes import bench_likes
from loadtest.live import CLIENTS as LIVE_CLIENTS
from loadtest.live import INTERVAL_MS as LIVE_INTERVAL_MS
from loadtest.live import ITEMS as LIVE_ITEMS
from loadtest.live import ROUNDS as LIVE_ROUNDS
from loadtest.live import bench_live
from loadtest.procs import CHILDREN, RESULTS, BenchError, install_cleanup, log, pin_cpus
from loadtest.reads import bench_reads
from loadtest.report import machine_info, scenario_markdown, summary
from loadtest.servers import AppServer, Backends
from loadtest.single import SINGLE_POOL, bench_single
from loadtest.viral import bench_viral
from loadtest.wrkrun import CONNECTIONS, WARMUP_S, run_wrk

PARTS = [
    "single",
    "likes",
    "flush",
    "bulk",
    "bulk-users",
    "viral",
    "bulk-matrix",
    "consume",
    "reads",
    "cold",
    "live",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run")
    parser.add_argument(
        "--only",
        choices=PARTS,
        help="one part; bulk-matrix (never run by default) is bulk in all four shapes; live (never run"
        " by default): WebSocket clients of the live counts",
    )
    parser.add_argument(
        "--bare-only",
        action="store_true",
        help="the bare app alone (no Redis, Postgres or engagementd): a calibration figure",
    )
    parser.add_argument(
        "--bulk-items",
        choices=ITEMS,
        default="mixed",
        help="bulk events: mixed (~35%% with user_id, ~50%% with watch_seconds), ids (content_id only), or"
        " users (every event a user_id of 100,000, on 200 items)",
    )
    parser.add_argument(
        "--bulk-columnar", action="store_true", help="bulk bodies as objects of columns, not arrays of items"
    )
    parser.add_argument(
        "--bulk-ids",
        choices=IDS,
        default="uniform",
        help="bulk content ids: uniform over 100,000, or zipf (s=1.1, seeded) over 1,000,000",
    )
    parser.add_argument(
        "--like-connections", type=int, default=LIKE_CONNECTIONS, help="wrk connections of the likes runs"
    )
    parser.add_argument("--viral-views", type=int, default=200_000)
    parser.add_argument(
        "--flush-items",
        type=int,
        default=FLUSH_ITEMS,
        help="flush part: items (rows) per flush and per round",
    )
    parser.add_argument("--consume-events", type=int, default=500_000, help="events per consume run")
    parser.add_argument("--consume-batch", type=int, default=50_000, help="consumer batch (service default)")
    parser.add_argument("--consume-ids", choices=IDS, default="uniform", help="content ids of consume events")
    parser.add_argument(
        "--cold-requests",
        type=int,
        default=COLD_REQUESTS,
        help="cold part: timed requests per kind, hot and cold",
    )
    parser.add_argument(
        "--cold-rate", type=int, default=COLD_RATE, help="cold part: sequential requests per second"
    )
    parser.add_argument("--live-clients", type=int, default=LIVE_CLIENTS, help="live part: WebSocket clients")
    parser.add_argument("--live-items", type=int, default=LIVE_ITEMS, help="live part: items they watch")
    parser.add_argument("--live-rounds", type=int, default=LIVE_ROUNDS, help="live part: view rounds")
    parser.add_argument(
        "--live-interval-ms",
        type=int,
        default=LIVE_INTERVAL_MS,
        help="live part: ENGAGEMENT_LIVE_INTERVAL_MS",
    )
    parser.add_argument(
        "--live-client-procs", type=int, default=1, help="live part: processes the clients are spread over"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    ns = parser.parse_args(argv)
    if ns.runs < 1 or not 1 <= ns.duration <= 120:
        parser.error("--runs must be >= 1 and --duration between 1 and 120")
    if ns.cold_requests < 50 or ns.cold_requests % 50 or not 1 <= ns.cold_rate <= 10_000:
        parser.error("--cold-requests must be a multiple of 50 and --cold-rate between 1 and 10,000")
    if not (1 <= ns.live_items <= ns.live_clients and ns.live_rounds >= 1 and ns.live_interval_ms >= 10):
        parser.error("--live-items must be between 1 and --live-clients, --live-rounds >= 1, interval >= 10")
    if not 1 <= ns.live_client_procs <= 16:
        parser.error("--live-client-procs must be between 1 and 16")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install -y wrk")
    return ns


def start_backends(ns: argparse.Namespace, workdir: Path, out: dict[str, Any]) -> Backends | None:
    """Private Redis and Postgres, unless --bare-only; None (the error in out["errors"]) on failure."""
    if ns.bare_only:
        return None
    try:
        return Backends(workdir)
    except Exception as exc:  # noqa: BLE001 - reported, and the bare calibration still runs
        out["errors"]["setup"] = f"{type(exc).__name__}: {exc}"
        log(f"private Redis/Postgres or migrate failed, measuring the bare app only: {exc}")
        return None


def run_parts(ns: argparse.Namespace, backends: Backends | None, workdir: Path, out: dict[str, Any]) -> None:
    """The parts --only asks for (all but bulk-matrix by default); errors go to out["errors"]."""
    env = backends.env if backends is not None else dict(os.environ)
    if ns.only in (None, "single"):
        try:
            bench_single(ns, env, backends, workdir, out)
        except BenchError as exc:
            out["errors"]["single"] = str(exc)
            log(f"single failed: {exc}")
    if ns.only in (None, "likes"):
        if backends is None:  # --bare-only, or the setup failed (already in out["errors"])
            if ns.only == "likes":
                out["errors"]["likes"] = "needs the private Redis (not with --bare-only)"
        else:
            try:
                bench_likes(ns, backends, workdir, out)
            except BenchError as exc:
                out["errors"]["likes"] = str(exc)
                log(f"likes failed: {exc}")
    if ns.only in (None, "flush") and backends is not None:
        try:
            bench_flush(ns, backends, out)
        except BenchError as exc:
            out["errors"]["flush"] = str(exc)
            log(f"flush failed: {exc}")
    if ns.only in (None, "consume") and backends is not None:
        try:
            bench_consume(ns, backends, workdir, out)
        except BenchError as exc:
            out["errors"]["consume"] = str(exc)
            log(f"consume failed: {exc}")
    if ns.only in (None, "reads") and backends is not None:
        try:
            bench_reads(ns, backends, workdir, out)
        except BenchError as exc:
            out["errors"]["reads"] = str(exc)
            log(f"reads failed: {exc}")
    if ns.only == "live":
        if backends is None:
            out["errors"]["live"] = "needs the private Redis and Postgres (not with --bare-only)"
        else:
            try:
                bench_live(ns, backends, workdir, out)
            except BenchError as exc:
                out["errors"]["live"] = str(exc)
                log(f"live failed: {exc}")
    if ns.only in ("flush", "consume", "reads", "cold", "live"):
        if ns.only == "cold":
            run_cold(ns, backends, workdir, out)
        return
    real: AppServer | None = None
    if backends is not None and ns.only in (None, "bulk", "bulk-users", "viral", "bulk-matrix"):
        try:
            real = AppServer("real", env, workdir)
            run_wrk("post_view.lua", real.url, WARMUP_S, CONNECTIONS, ["warm-", str(SINGLE_POOL)])
        except BenchError as exc:
            out["errors"]["api"] = str(exc)
            log(f"engagementd api failed: {exc}")
    if real is not None:
        assert backends is not None
        try:
            for name, fn in (
                ("bulk", lambda: bench_bulk(ns, backends, real, workdir, out)),
                ("bulk-users", lambda: bench_bulk(ns, backends, real, workdir, out, key="bulk_users")),
                ("bulk-matrix", lambda: bench_bulk_matrix(ns, backends, real, workdir, out)),
                ("viral", lambda: bench_viral(ns, backends, real, out)),
            ):
                if ns.only == name or (ns.only is None and name != "bulk-matrix"):
                    try:
                        fn()
                    except BenchError as exc:
                        out["errors"][name] = str(exc)
                        log(f"{name} failed: {exc}")
        finally:
            real.stop()
    if ns.only is None:
        run_cold(ns, backends, workdir, out)


def run_cold(ns: argparse.Namespace, backends: Backends | None, workdir: Path, out: dict[str, Any]) -> None:
    """The cold part, last: it restarts the private Postgres (pg_stat_statements)."""
    if backends is None:
        if ns.only == "cold":
            out["errors"]["cold"] = "needs the private Redis and Postgres (not with --bare-only)"
        return
    try:
        bench_cold(ns, backends, workdir, out)
    except BenchError as exc:
        out["errors"]["cold"] = str(exc)
        log(f"cold failed: {exc}")


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    install_cleanup()
    pin_cpus()
    out: dict[str, Any] = {
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(ns).items()},
        "errors": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="engagementd-bench-"))
    os.chmod(workdir, 0o755)
    backends: Backends | None = None
    try:
        backends = start_backends(ns, workdir, out)
        run_parts(ns, backends, workdir, out)
    except (KeyboardInterrupt, SystemExit) as exc:
        out["errors"]["interrupted"] = (
            f"stopped by a signal (exit {exc.code if isinstance(exc, SystemExit) else 130})"
        )
        raise
    finally:
        CHILDREN.stop_all()
        if backends is not None:
            backends.stop()
        out["machine"]["loadavg_end"] = list(os.getloadavg())
        if not out["errors"]:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            out["workdir"] = str(workdir)
        out["summary"] = summary(out)
        ns.output.parent.mkdir(parents=True, exist_ok=True)
        ns.output.write_text(json.dumps(out, indent=2, default=str) + "\n")
        # the scenario table, as the README shows it
        ns.output.with_name(ns.output.stem + "-table.md").write_text(scenario_markdown(out))
        print(out["summary"])
        print(f"\nfull results: {ns.output}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
