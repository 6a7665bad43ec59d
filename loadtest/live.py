"""live: WebSocket clients of ``GET /api/v1/content/{contentId}/live`` on one api process while views
arrive: how long a view takes to reach every client, the api worker's memory per connection, and Redis
commands per second as clients are added.

One ``engagementd api`` (granian, one worker, server CPU) with ENGAGEMENT_LIVE_INTERVAL_MS
(``--live-interval-ms``, 1,000). The clients (``websockets``' asyncio client) live in
``--live-client-procs`` child processes of their own (``python -m loadtest.live``, client CPU, their
RLIMIT_NOFILE raised to the hard limit); client k watches item k mod W. The items are seeded with one
view each first (their counts in Redis). Four scenarios, on the same items, with the same view rounds:

- ``none``: no client (the cost of the views alone);
- ``a``: 1 client on 1 item;
- ``b``: one client per item, ``--live-items`` (100) items;
- ``c``: ``--live-clients`` (5,000) clients on the same number of items (50 per item).

A round posts one view to each of the items in one ``POST /api/v1/views/batch`` (JSON, ingest token) at
``T_r`` (``time.time()``). Round r is due at r x 4 intervals + k_r / R of an interval (k a seeded
permutation of 0 … R-1; rounds at least 3 intervals apart): whatever the phase of the api's tick, the R
rounds sample it evenly, and every scenario gets the same schedule. Every client records the time
(``time.time()``, same clock) at which each new view count arrives: when its bytes reach the client's
event loop (``data_received``; the wait for the client's task after that is reported apart). A (client,
round) pair's delay is the first time its item's count reached the round's count minus ``T_r``.
Reported: p50 / p99 / max of the delays, the share within 2 intervals [goal >= 99%], the pairs never
seen [must be 0], and per round the spread of the receive times over the clients (the fan-out). Also the
client processes' CPU share and event-loop lag over the rounds (a saturated client delays even the
arrival stamps of the frames it has not read yet), and the api's CPU share.

Memory: VmRSS of the granian worker (the api's child) with no client (after scenarios a and b ended, so
one-time costs are paid) and with all of scenario c's clients connected: (after - before) / clients.

Redis: INFO commandstats from just before the first round to one gap after the last, every command but
the measuring connections' own (INFO, CONFIG, HELLO, CLIENT SETINFO), per second. The live read is one
round trip per tick for all watched items of the process, so b and c should cost the same. The views
are the same in every scenario, so (commands - those of ``none``) / live ticks (the api's
engagement_live_tick_duration_seconds_count) is the Redis cost of one live read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.bodies import ingest_token
from loadtest.cold_stats import percentile
from loadtest.httpc import METRIC_LINE, Http
from loadtest.procs import CHILDREN, REPO, BenchError, log, poll_until, tail
from loadtest.servers import AppServer, Backends

CLIENTS = 5_000
ITEMS = 100
ROUNDS = 10
INTERVAL_MS = 1_000
PERIOD_INTERVALS = 4  # a round every 4 intervals, shifted by k/R of one (so at least 3 apart)
GOAL_SHARE = 0.99  # of (client, round) pairs seen within 2 intervals
CONNECT_CONCURRENCY = 100  # WebSocket handshakes in flight per client process
CONNECT_TIMEOUT_S = 180
SEED = 17
TICKS = "engagement_live_tick_duration_seconds_count"  # the api's live reads (one per tick)


def bench_live(ns: argparse.Namespace, backends: Backends, workdir: Path, out: dict[str, Any]) -> None:
    interval_ms = ns.live_interval_ms
    clients, items, procs = ns.live_clients, ns.live_items, ns.live_client_procs
    res: dict[str, Any] = {
        "interval_ms": interval_ms,
        "clients": clients,
        "items": items,
        "rounds": ns.live_rounds,
        "client_procs": procs,
        "scenarios": {},
    }
    out["live"] = res
    res["nofile"] = raise_nofile(clients + 1_000)  # the api inherits the harness's limit
    env = {
        **backends.env,
        "ENGAGEMENT_RATE_LIMITS": "",
        "ENGAGEMENT_LIVE_INTERVAL_MS": str(interval_ms),
    }
    api = AppServer("real", env, workdir)
    http = Http(api.port)
    try:
        worker = worker_pid(api)
        res["api_worker_pid"] = worker
        res["api_worker_nofile"] = nofile_of(worker)
        if res["api_worker_nofile"] < clients + 100:
            raise BenchError(f"live: the api worker may open {res['api_worker_nofile']} files, too few")
        res["rss_fresh_kib"] = rss_kib(worker)
        token = ingest_token(backends.env["ENGAGEMENT_JWT_SECRET"])
        tag = f"lv{int(time.time())}-"
        ids = [f"{tag}{i}" for i in range(items)]  # the same items in every scenario (same Redis work)
        post_views(http, token, ids)  # seed: every item's counts in Redis
        wait_views(backends, ids, len(ids))
        scenarios = [("none", 0, 0), ("a", 1, 1), ("b", items, items), ("c", clients, items)]
        for name, n_clients, watched in scenarios:
            sc: dict[str, Any] = {"clients": n_clients, "watched_items": watched}
            res["scenarios"][name] = sc
            group: ClientGroup | None = None
            try:
                if n_clients:
                    if name == "c":
                        sc["rss_before_kib"] = rss_kib(worker)
                        sc["rss_group_before_kib"] = group_rss_kib(api.proc.pid)
                    group = ClientGroup(name, api.port, tag, watched, n_clients, procs, workdir)
                    sc["connect"] = group.wait_ready(CONNECT_TIMEOUT_S)
                    api.alive()
                    # A connection gets at most one message per interval: its first one (on connect) must
                    # not hold back round 1's. Also: every first frame sent, buffers settled (memory).
                    time.sleep(max(1.0, 2 * interval_ms / 1000))
                    if name == "c":
                        sc["rss_after_kib"] = rss_kib(worker)
                        sc["rss_group_after_kib"] = group_rss_kib(api.proc.pid)
                        connected = sc["connect"]["connected"]
                        sc["rss_per_connection_kib"] = (sc["rss_after_kib"] - sc["rss_before_kib"]) / max(
                            connected, 1
                        )
                rounds = run_rounds(ns, backends, api, http, token, ids, sc)
                if group is not None:
                    results = group.stop()
                    group = None
                    sc.update(score(results, rounds, interval_ms, ns.live_rounds))
                    sc.update(client_load(results))
                wait_no_connections(http)
            finally:
                if group is not None:
                    group.kill()
            log_scenario(name, sc)
        res["live_metrics"] = live_metrics(http)
        summarize(res)
    finally:
        http.close()
        api.stop()


# --- the rounds and Redis -------------------------------------------------------------------------


def run_rounds(
    ns: argparse.Namespace,
    backends: Backends,
    api: AppServer,
    http: Http,
    token: str,
    ids: list[str],
    sc: dict[str, Any],
) -> list[float]:
    """``--live-rounds`` batches of one view per item; the time.time() of each post. Fills in the Redis
    commands and the api's CPU over the rounds (through one period after the last)."""
    interval_s = ns.live_interval_ms / 1000
    n = ns.live_rounds
    shifts = list(range(n))
    random.Random(SEED).shuffle(shifts)
    times: list[float] = []
    ticks0 = live_metrics(http).get(TICKS, 0.0)
    before = backends.redis.info("commandstats")
    cpu0, wall0 = api.cpu_seconds(), time.monotonic()
    for r in range(n):
        due = wall0 + (r * PERIOD_INTERVALS + shifts[r] / n) * interval_s
        time.sleep(max(0.0, due - time.monotonic()))
        times.append(time.time())
        post_views(http, token, ids)
    time.sleep(max(0.0, wall0 + n * PERIOD_INTERVALS * interval_s - time.monotonic()))
    wall = time.monotonic() - wall0
    cpu = api.cpu_seconds() - cpu0
    after = backends.redis.info("commandstats")
    ticks = live_metrics(http).get(TICKS, 0.0) - ticks0
    api.alive()
    by_name = {
        k.removeprefix("cmdstat_"): int(v["calls"]) - int(before.get(k, {}).get("calls", 0))
        for k, v in after.items()
        if not harness_command(k)
    }
    by_name = {k: v for k, v in sorted(by_name.items()) if v}
    total = sum(by_name.values())
    sc.update(
        window_s=round(wall, 3),
        redis_commands=total,
        redis_commands_by_name=by_name,
        redis_commands_per_s=total / wall,
        api_cpu_share=round(cpu / wall, 3),
        live_ticks=int(ticks),
    )
    return times


def harness_command(name: str) -> bool:
    """The measuring connections' own commands (INFO, CONFIG, HELLO, CLIENT SETINFO on connect)."""
    base = name.removeprefix("cmdstat_").lower()
    return base.split("|", 1)[0] in ("info", "config", "hello") or base == "client|setinfo"


def post_views(http: Http, token: str, ids: list[str]) -> None:
    body = json.dumps([{"content_id": i} for i in ids]).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, text = http.request("POST", "/api/v1/views/batch", body, headers)
    if status != 202:
        raise BenchError(f"live: POST /api/v1/views/batch answered {status}: {text[:200]!r}")


def wait_views(backends: Backends, ids: list[str], expect: int) -> None:
    if not poll_until(lambda: backends.views_of(ids) >= expect, 30):
        raise BenchError(f"live: {expect} views never reached Redis")


def live_metrics(http: Http) -> dict[str, float]:
    """The api's engagement_live_* figures, summed over their labels."""
    status, body = http.request("GET", "/metrics")
    if status != 200:
        raise BenchError(f"live: /metrics answered {status}")
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        m = METRIC_LINE.match(line)
        if m is None or not m.group(1).startswith("engagement_live_"):
            continue
        name = m.group(1)
        if not name.endswith(("_created", "_bucket")):
            values[name] = values.get(name, 0.0) + float(m.group(2))
    return values


def wait_no_connections(http: Http) -> None:
    if not poll_until(lambda: live_metrics(http).get("engagement_live_connections", 0) == 0, 30):
        raise BenchError("live: the api still counts live connections 30 s after the clients left")


# --- processes and memory -------------------------------------------------------------------------


def raise_nofile(need: int) -> int:
    """RLIMIT_NOFILE of this process to its hard limit (children inherit it); BenchError below ``need``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < need:
        raise BenchError(f"live: RLIMIT_NOFILE is {soft} (hard {hard}), {need} needed: raise ulimit -n")
    return soft


def worker_pid(api: AppServer) -> int:
    """The granian worker: the process of the api's group that serves (a child of the main process)."""

    def find() -> int | None:
        kids = [p for p in group_pids(api.proc.pid) if p != api.proc.pid and ppid_of(p) == api.proc.pid]
        return max(kids, key=rss_kib) if kids else None

    pid = poll_until(find, 10)
    if pid is None:
        raise BenchError("live: no granian worker process found under the api")
    return int(pid)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(stat_file.parent.name))
    return pids


def ppid_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_rss_kib(pgid: int) -> int:
    return sum(rss_kib(p) for p in group_pids(pgid))


def nofile_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return 1 << 30 if soft == "unlimited" else int(soft)
    return 0


class ClientGroup:
    """``procs`` client processes (``python -m loadtest.live``) sharing ``clients`` WebSocket clients;
    each prints one JSON line when its clients are connected and another when it has written its results
    (after "stop" on its stdin)."""

    def __init__(
        self, name: str, port: int, prefix: str, items: int, clients: int, procs: int, workdir: Path
    ) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outs: list[Path] = []
        self.logs: list[Path] = []
        self.buffers: dict[int, bytes] = {}
        procs = max(1, min(procs, clients))
        for i in range(procs):
            out = workdir / f"live-{name}-{i}.json"
            log_path = workdir / f"live-{name}-{i}.log"
            cmd = [sys.executable, "-m", "loadtest.live", "--port", str(port), "--prefix", prefix]
            cmd += ["--items", str(items), "--clients", str(clients), "--proc", str(i), "--procs", str(procs)]
            cmd += ["--out", str(out)]
            with open(log_path, "ab") as err:
                proc = subprocess.Popen(
                    cmd,
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    start_new_session=True,
                )
            CHILDREN.adopt(f"live-clients-{name}-{i}", proc)
            self.procs.append(proc)
            self.outs.append(out)
            self.logs.append(log_path)

    def _line(self, i: int, deadline: float) -> dict[str, Any]:
        proc = self.procs[i]
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = self.buffers.get(i, b"")
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"live: client process {i} silent until the deadline:\n{tail(self.logs[i])}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    proc.wait(5)
                    raise BenchError(
                        f"live: client process {i} exited {proc.returncode}:\n{tail(self.logs[i])}"
                    )
                buf += chunk
        line, _, rest = buf.partition(b"\n")
        self.buffers[i] = rest
        return dict(json.loads(line))

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        lines = [self._line(i, deadline) for i in range(len(self.procs))]
        ready = {
            "connected": sum(x["connected"] for x in lines),
            "failed": sum(x["failed"] for x in lines),
            "connect_s": max(x["connect_s"] for x in lines),
        }
        if ready["failed"]:
            errors = [e for x in lines for e in x.get("errors", [])]
            raise BenchError(f"live: {ready['failed']} clients did not connect, e.g. {errors[:3]}")
        return ready

    def stop(self) -> list[dict[str, Any]]:
        """Each process closes its connections, writes its results; the results of every process."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
            proc.stdin.flush()
        deadline = time.monotonic() + 120
        for i in range(len(self.procs)):
            self._line(i, deadline)
        results = [json.loads(out.read_text()) for out in self.outs]
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            CHILDREN.stop(proc)
        return results

    def kill(self) -> None:
        for proc in self.procs:
            CHILDREN.stop(proc, timeout_s=2)


# --- the figures ----------------------------------------------------------------------------------


def score(
    results: list[dict[str, Any]], rounds: list[float], interval_ms: int, n_rounds: int
) -> dict[str, Any]:
    """Delays of every (client, round) pair: the first time the client's count reached the round's."""
    delays: list[float] = []
    missed = 0
    errors: list[str] = []
    inexact = 0
    seen: list[list[float]] = [[] for _ in rounds]  # per round, the receive times
    queued: list[float] = []  # arrival to the client task's turn, in the client process
    for proc in results:
        for c in proc["clients"]:
            if c["error"]:
                errors.append(c["error"])
            changes = c["changes"]
            if not changes:
                missed += len(rounds)
                continue
            base = changes[0][0]
            if changes[-1][0] != base + n_rounds:
                inexact += 1
            j = 0
            for r, sent in enumerate(rounds):
                while j < len(changes) and changes[j][0] < base + r + 1:
                    j += 1
                if j == len(changes):
                    missed += len(rounds) - r
                    break
                delays.append((changes[j][1] - sent) * 1000)
                seen[r].append(changes[j][1])
                queued.append((changes[j][2] - changes[j][1]) * 1000)
    delays.sort()
    limit = 2 * interval_ms
    pairs = len(delays) + missed
    fanout = [(max(t) - min(t)) * 1000 for t in seen if t]
    per_round = [
        {
            "first_ms": round((min(t) - sent) * 1000, 1),
            "median_ms": round((statistics.median(t) - sent) * 1000, 1),
            "last_ms": round((max(t) - sent) * 1000, 1),
            "seen": len(t),
        }
        for t, sent in zip(seen, rounds, strict=True)
        if t
    ]
    within = sum(1 for d in delays if d <= limit) / pairs if pairs else 0.0
    return {
        "pairs": pairs,
        "delay_p50_ms": percentile(delays, 50) if delays else None,  # type: ignore[arg-type]
        "delay_p99_ms": percentile(delays, 99) if delays else None,  # type: ignore[arg-type]
        "delay_max_ms": delays[-1] if delays else None,
        "delay_min_ms": delays[0] if delays else None,
        "within_2x_interval_share": within,
        "missed": missed,
        "final_count_wrong": inexact,
        "client_errors": len(errors),
        "client_error_examples": errors[:5],
        "fanout_spread_ms_median": statistics.median(fanout) if fanout else None,
        "fanout_spread_ms_max": max(fanout) if fanout else None,
        "per_round": per_round,  # delays of the first, median and last client
        "client_queue_ms_p50": statistics.median(queued) if queued else None,
        "client_queue_ms_max": max(queued) if queued else None,
    }


def client_load(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The client processes over the rounds: CPU share (the busiest one) and event-loop lag."""
    return {
        "client_cpu_share_max": max(r["cpu_s"] / r["wall_s"] for r in results if r["wall_s"] > 0),
        "client_loop_lag_p99_ms": max(r["lag_p99_ms"] for r in results),
        "client_loop_lag_max_ms": max(r["lag_max_ms"] for r in results),
    }


def summarize(res: dict[str, Any]) -> None:
    sc = res["scenarios"]
    c = sc.get("c", {})
    for key in (
        "delay_p50_ms",
        "delay_p99_ms",
        "delay_max_ms",
        "within_2x_interval_share",
        "missed",
        "rss_per_connection_kib",
    ):
        res[key] = c.get(key)
    res["redis_commands_per_s"] = {name: s.get("redis_commands_per_s") for name, s in sc.items()}
    if "none" in sc:  # the same views in every scenario: the rest is the live reads
        views_only = sc["none"]["redis_commands"]
        for s in sc.values():
            if s.get("live_ticks"):
                s["live_commands_per_tick"] = (s["redis_commands"] - views_only) / s["live_ticks"]
        res["live_commands_per_tick"] = {n: s.get("live_commands_per_tick") for n, s in sc.items()}
    res["valid"] = all(
        s.get("missed", 0) == 0 and s.get("client_errors", 0) == 0 and s.get("final_count_wrong", 0) == 0
        for s in sc.values()
    ) and all(name in sc for name in ("none", "a", "b", "c"))
    res["goal_met"] = bool(res["valid"] and (res["within_2x_interval_share"] or 0) >= GOAL_SHARE)
    rows = [
        ("scenario", "clients", "items", "Redis cmd/s", "cmd/read", "delay p50/p99/max ms", "<=2x", "missed")
        + ("client CPU", "fan-out max ms", "loop lag max ms")
    ]
    for name, s in sc.items():
        d = "-"
        if s.get("delay_p50_ms") is not None:
            d = f"{s['delay_p50_ms']:.0f}/{s['delay_p99_ms']:.0f}/{s['delay_max_ms']:.0f}"
        share = s.get("within_2x_interval_share")
        rows.append(
            (
                name,
                str(s["clients"]),
                str(s["watched_items"]),
                f"{s.get('redis_commands_per_s', 0):.1f}",
                "-" if s.get("live_commands_per_tick") is None else f"{s['live_commands_per_tick']:.1f}",
                d,
                "-" if share is None else f"{share:.2%}",
                str(s.get("missed", "-")),
                "-" if "client_cpu_share_max" not in s else f"{s['client_cpu_share_max']:.2f}",
                "-" if s.get("fanout_spread_ms_max") is None else f"{s['fanout_spread_ms_max']:.0f}",
                "-" if "client_loop_lag_max_ms" not in s else f"{s['client_loop_lag_max_ms']:.0f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        log("live  " + "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))
    if c.get("rss_per_connection_kib") is not None:
        log(
            f"live: api worker RSS {c['rss_before_kib']:,} KiB -> {c['rss_after_kib']:,} KiB with "
            f"{c['connect']['connected']:,} connections: {c['rss_per_connection_kib']:.1f} KiB each"
        )


def log_scenario(name: str, sc: dict[str, Any]) -> None:
    msg = f"live {name}: {sc['clients']} clients, {sc['redis_commands_per_s']:.1f} Redis commands/s"
    if sc.get("delay_p50_ms") is not None:
        msg += (
            f", delay p50 {sc['delay_p50_ms']:.0f} p99 {sc['delay_p99_ms']:.0f}"
            f" max {sc['delay_max_ms']:.0f} ms, within 2 intervals {sc['within_2x_interval_share']:.2%}"
            f", missed {sc['missed']}, client CPU {sc['client_cpu_share_max']:.2f}"
            f", loop lag max {sc['client_loop_lag_max_ms']:.0f} ms"
        )
    log(msg)


# --- the client process (python -m loadtest.live) ------------------------------------------------


async def client_main(a: argparse.Namespace) -> dict[str, Any]:
    """Connect this process's clients, say so on stdout, record until "stop" on stdin; the records."""
    import orjson
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed

    class Stamped(ClientConnection):
        """Stamps the arrival of its bytes (time.time()), before this process's queue of frames: a
        frame's receive time is when its data reached the event loop, not when its task ran."""

        arrived = 0.0

        def data_received(self, data: bytes) -> None:
            self.arrived = time.time()
            super().data_received(data)

    raise_nofile(0)
    loop = asyncio.get_running_loop()
    mine = [k for k in range(a.clients) if k % a.procs == a.proc]
    records: list[dict[str, Any]] = []
    conns: list[Any] = []
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    pending = len(mine)
    all_in = asyncio.Event()
    stopping = False
    connect_errors: list[str] = []

    def settled() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0:
            all_in.set()

    async def client(k: int) -> None:
        item = f"{a.prefix}{k % a.items}"
        rec: dict[str, Any] = {"item": item, "changes": [], "error": None}
        records.append(rec)
        first = True
        try:
            async with sem:
                ws = await connect(
                    f"ws://127.0.0.1:{a.port}/api/v1/content/{item}/live",
                    ping_interval=None,
                    compression=None,
                    open_timeout=CONNECT_TIMEOUT_S,
                    close_timeout=10,
                    create_connection=Stamped,
                )
            conns.append(ws)
            last = None
            changes = rec["changes"]
            async for raw in ws:
                now = time.time()
                views = orjson.loads(raw).get("views")
                if views is None:
                    continue  # keepalive
                if views != last:  # frames come an interval apart: the last bytes that arrived hold it
                    changes.append((views, ws.arrived, now))
                    last = views
                if first:
                    first = False
                    settled()
            if not stopping:
                rec["error"] = f"closed by the server: {ws.close_code} {ws.close_reason}"
        except ConnectionClosed as exc:
            if not stopping:
                rec["error"] = f"connection closed: {exc!r}"
        except Exception as exc:  # noqa: BLE001 - reported per client
            rec["error"] = f"{type(exc).__name__}: {exc}"
            if first:
                connect_errors.append(rec["error"])
        finally:
            if first:
                settled()

    started = time.monotonic()
    tasks = [asyncio.ensure_future(client(k)) for k in mine]
    await all_in.wait()
    connect_s = time.monotonic() - started
    failed = sum(1 for r in records if not r["changes"])
    print(
        json.dumps(
            {
                "connected": len(mine) - failed,
                "failed": failed,
                "connect_s": connect_s,
                "errors": connect_errors[:5],
            }
        ),
        flush=True,
    )
    lags: list[float] = []
    done = asyncio.Event()

    async def watch_lag() -> None:
        while not done.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.005)
            lags.append((loop.time() - t0 - 0.005) * 1000)

    lag_task = asyncio.ensure_future(watch_lag())
    cpu0, wall0 = sum(os.times()[:2]), time.monotonic()
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    cpu, wall = sum(os.times()[:2]) - cpu0, time.monotonic() - wall0
    done.set()
    await lag_task
    stopping = True
    closing = asyncio.Semaphore(CONNECT_CONCURRENCY * 2)

    async def close(ws: Any) -> None:
        async with closing:
            with contextlib.suppress(Exception):
                await ws.close()

    await asyncio.gather(*(close(ws) for ws in conns))
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    lags.sort()
    result = {
        "clients": records,
        "cpu_s": cpu,
        "wall_s": wall,
        "lag_p99_ms": percentile(lags, 99) if lags else 0.0,  # type: ignore[arg-type]
        "lag_max_ms": lags[-1] if lags else 0.0,
    }
    return result


def client_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="WebSocket clients of the live part (started by loadtest.bench)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", required=True, help="content ids are <prefix><k mod items>")
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--clients", type=int, required=True, help="clients of all processes together")
    p.add_argument("--proc", type=int, default=0, help="this process takes the clients k with k mod procs")
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


if __name__ == "__main__":
    import orjson
    import uvloop

    args = client_args()
    Path(args.out).write_bytes(orjson.dumps(uvloop.run(client_main(args))))
    print(json.dumps({"done": True}), flush=True)
