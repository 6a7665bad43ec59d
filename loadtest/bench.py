"""The load benchmark of one api process, with private Redis and Postgres, in one command.

    python -m loadtest.bench [--runs 5] [--duration 10] [--only single|bulk|viral] [--viral-views 200000]

What it measures (targets in brackets; loadtest/README.md explains each):

single  requests/sec of ``POST /api/v1/content/{id}/views`` (no body, ~10,000 ids) on the real api vs
        the bare Starlette app of loadtest/bare_app.py, both served by granian (ASGI, uvloop, one
        worker) pinned to CPU 0 and driven by wrk pinned to CPU 1; bare and real alternate for --runs
        rounds; medians and the median of the per-round ratios [>= 0.85]. Every real round checks
        the count in Redis against wrk's 2xx count, and one exact-count run (fixed N, nothing in
        flight at the end) must match exactly.
bulk    events/s through ``POST /api/v1/views/batch``: 1,000-event msgpack bodies, ids from 100,000
        [>= 1,000,000 events/s into one process].
viral   N views of ONE content id: Redis commands per 1,000 views from INFO commandstats (every command,
        those run inside Lua scripts included; the harness's INFO/CONFIG and its /stats polls left out)
        [<= 10]; then ``engagementd flusher --once``: content_counters rows written for that item
        (pg_stat_user_tables n_tup_ins + n_tup_upd) [1 per item per flush].

Everything is bound to 127.0.0.1; every child runs in its own process group and is killed on exit.
The harness itself, Redis, Postgres, wrk and the flusher are pinned to CPU 1 so CPU 0 is the server's.
Output: a table on stdout and loadtest/results/latest.json.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WRK_DIR = HERE / "wrk"
RESULTS = HERE / "results"

SERVER_CPU = 0
CLIENT_CPU = 1
CONNECTIONS = 64
SINGLE_POOL = 10_000
BULK_POOL = 100_000
BULK_BODIES = 16
BULK_EVENTS = 1_000
BULK_CONNECTIONS = 16
WARMUP_S = 2
EXACT_VIEWS = 50_000


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- child processes -------------------------------------------------------------------------------------


class Children:
    """Every long-lived child of the harness, each in its own process group; all killed on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, cmd: list[str], env: dict[str, str], log_path: Path, cpu: int | None = None
    ) -> subprocess.Popen[bytes]:
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # The group may hold workers that outlive the parent (granian's worker processes).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            self.stop(proc)


CHILDREN = Children()


def _on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(check: Callable[[], Any], timeout_s: float, interval_s: float = 0.02) -> Any:
    """Call ``check`` until it returns something truthy (returned) or the deadline passes (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)
        interval_s = min(interval_s * 1.5, 0.1)


def engagementd_cmd() -> list[str]:
    script = Path(sys.executable).parent / "engagementd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "daemon.cli"]


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 300) -> str:
    cmd = engagementd_cmd() + args
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(CLIENT_CPU), *cmd]
    res = subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL
    )
    out = res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")
    if res.returncode != 0:
        raise BenchError(f"engagementd {' '.join(args)} exited {res.returncode}:\n{out[-3000:]}")
    return out


# -- HTTP -----------------------------------------------------------------------------------------------


class Http:
    """A keep-alive HTTP/1.1 client to one port (stdlib: no load on the server beyond the request)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_http(
    port: int,
    proc: subprocess.Popen[bytes],
    method: str,
    path: str,
    expect: int,
    log_path: Path,
    timeout_s: float = 60,
) -> None:
    client = Http(port)

    def ready() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"server exited {proc.returncode} while starting:\n{tail(log_path)}")
        try:
            return client.request(method, path)[0] == expect
        except OSError:
            return False

    try:
        if not poll_until(ready, timeout_s, 0.05):
            raise BenchError(f"server on port {port} not ready after {timeout_s}s:\n{tail(log_path)}")
    finally:
        client.close()


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+([-+0-9.eE]+|NaN)")


def metrics(client: Http) -> dict[str, float]:
    status, body = client.request("GET", "/metrics")
    if status != 200:
        raise BenchError(f"/metrics answered {status}")
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        m = METRIC_LINE.match(line)
        if m and m.group(1) not in values:
            values[m.group(1)] = float(m.group(2))
    return values


def metric(values: dict[str, float], name: str) -> float:
    for candidate in (name, name + "_total"):
        if candidate in values:
            return values[candidate]
    raise BenchError(f"/metrics has no {name}")


# -- wrk ------------------------------------------------------------------------------------------------


def run_wrk(
    script: str,
    url: str,
    duration_s: int,
    connections: int,
    args: Iterable[str] = (),
    stop_when_threads_done: bool = False,
) -> dict[str, Any]:
    """Run wrk pinned to the client CPU; its parsed summary.

    With ``stop_when_threads_done`` (scripts that call wrk.thread:stop()), wrk's main thread still
    sleeps for -d; the harness sees its worker threads gone and interrupts that sleep with SIGINT, so
    wrk's reported duration is the real one.
    """
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "-s", str(WRK_DIR / script), url]
    extra = list(args)
    if extra:
        cmd += ["--", *extra]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(CLIENT_CPU), *cmd]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, stdin=subprocess.DEVNULL
    )
    CHILDREN.procs.append(("wrk", proc))
    try:
        if stop_when_threads_done:
            task_dir = Path(f"/proc/{proc.pid}/task")
            seen_workers = False
            deadline = time.monotonic() + duration_s + 30
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    n = len(os.listdir(task_dir))
                except OSError:
                    break
                if n > 1:
                    seen_workers = True
                elif seen_workers:
                    os.kill(proc.pid, signal.SIGINT)
                    break
                time.sleep(0.01)
        out, err = proc.communicate(timeout=duration_s + 60)
    finally:
        CHILDREN.stop(proc, 2)
    text = out.decode(errors="replace")
    if proc.returncode not in (0, -signal.SIGINT):
        raise BenchError(f"wrk exited {proc.returncode}: {err.decode(errors='replace')}\n{text}")
    return parse_wrk(text)


def parse_wrk(text: str) -> dict[str, Any]:
    def num(pattern: str, default: float | None = None) -> float:
        m = re.search(pattern, text)
        if m is None:
            if default is None:
                raise BenchError(f"unexpected wrk output:\n{text}")
            return default
        return float(m.group(1))

    requests = int(num(r"(\d+) requests in"))
    m = re.search(r"requests in ([\d.]+)(us|ms|s|m)\b", text)
    if m is None:
        raise BenchError(f"unexpected wrk output:\n{text}")
    duration_s = float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]
    result: dict[str, Any] = {
        "requests": requests,
        "duration_s": duration_s,
        "requests_per_s": num(r"Requests/sec:\s+([\d.]+)"),
        "non_2xx": int(num(r"Non-2xx or 3xx responses: (\d+)", 0)),
        "socket_errors": 0,
        "latency_avg": (re.search(r"Latency\s+(\S+)", text) or [None, None])[1],
    }
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if errs:
        result["socket_errors"] = sum(int(g) for g in errs.groups())
    lt = re.search(r"LT_RESULT sent=(\d+) ok=(\d+) err=(\d+) idle=(\d+) duration_us=(\d+)", text)
    if lt:
        sent, ok, bad, idle, dur = (int(g) for g in lt.groups())
        result.update(sent=sent, ok=ok, err=bad, idle=idle, duration_s=dur / 1e6)
    result["ok_2xx"] = requests - result["non_2xx"]
    return result


# -- servers under test ---------------------------------------------------------------------------------


class AppServer:
    """One granian server (bare reference or engagementd api) pinned to the server CPU."""

    def __init__(self, kind: str, env: dict[str, str], workdir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = workdir / f"{kind}.log"
        if kind == "bare":
            cmd = [sys.executable, "-m", "loadtest.bare_app", "--host", "127.0.0.1", "--port", str(self.port)]
        else:
            cmd = engagementd_cmd() + [
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ]
        self.proc = CHILDREN.spawn(kind, cmd, env, self.log_path, cpu=SERVER_CPU)
        probe = ("POST", "/api/v1/content/__probe/views", 202) if kind == "bare" else ("GET", "/healthz", 200)
        wait_http(self.port, self.proc, probe[0], probe[1], probe[2], self.log_path)
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every process of the server's process group."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.proc.pid:  # fields[2]: pgrp; [11], [12]: utime, stime
                total += int(fields[11]) + int(fields[12])
        return total / tick

    def measure(self, script: str, duration_s: int, connections: int, args: list[str]) -> dict[str, Any]:
        """A wrk run, plus the server's CPU time during it (what it got of its CPU on a busy machine)."""
        cpu0 = self.cpu_seconds()
        w = run_wrk(script, self.url, duration_s, connections, args)
        cpu = self.cpu_seconds() - cpu0
        w["server_cpu_s"] = round(cpu, 2)
        w["server_cpu_share"] = round(cpu / w["duration_s"], 3)
        w["ok_per_server_cpu_s"] = w["ok_2xx"] / cpu if cpu > 0 else None
        self.alive()
        return w

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.kind} server died ({self.proc.returncode}):\n{tail(self.log_path)}")

    def stop(self) -> None:
        CHILDREN.stop(self.proc)


class Backends:
    """Private Redis and Postgres from daemon/servers.py, migrated; the environment of the service."""

    def __init__(self, workdir: Path) -> None:
        from daemon.servers import PostgresServer, RedisServer

        self.redis_server = RedisServer(workdir / "redis", appendonly=True)
        self.pg = PostgresServer(workdir / "pg", fast=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.redis_server.start()
        self.pg.init()
        self.pg.start()
        self.pg.create_database("engagement")
        import redis

        self.redis = redis.Redis.from_url(self.redis_server.url, decode_responses=True)
        self.env = {
            **os.environ,
            "ENGAGEMENT_REDIS_URL": self.redis_server.url,
            "ENGAGEMENT_DATABASE_URL": self.pg.dsn("engagement"),
            "ENGAGEMENT_JWT_SECRET": os.urandom(24).hex(),
            "ENGAGEMENT_LOG_LEVEL": "WARNING",
        }
        self.env.pop("ENGAGEMENT_KAFKA_BOOTSTRAP", None)
        self.env.pop("ENGAGEMENT_JWT_PUBLIC_KEY", None)
        from daemon.settings import Settings

        self.shards = Settings.from_env(self.env).shards
        log(f"redis {self.redis_server.url}, postgres {self.pg.dsn('engagement')}; migrating")
        run_cli(["migrate"], self.env)

    def views_of(self, content_ids: Iterable[str]) -> int:
        """Sum of the live view counts of ``content_ids`` in Redis (key layout of daemon/keys.py)."""
        total = 0
        ids = list(content_ids)
        for i in range(0, len(ids), 5000):
            pipe = self.redis.pipeline(transaction=False)
            for cid in ids[i : i + 5000]:
                shard = zlib.crc32(cid.encode()) % self.shards
                pipe.hget(f"eng:{{s:{shard}}}:live", f"views:{cid}")
            total += sum(int(v) for v in pipe.execute() if v is not None)
        return total

    def counters_writes(self) -> int:
        out = self.pg.psql(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables "
            "WHERE relname = 'content_counters'",
            dbname="engagement",
        )
        return int(out.strip() or 0)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.redis.close()  # type: ignore[has-type]
        for server in (self.pg, self.redis_server):
            with contextlib.suppress(Exception):
                server.stop()


def wait_drained(client: Http, timeout_s: float = 60) -> dict[str, float]:
    """Poll /metrics until the api's view buffer holds nothing (queued or in flight); the last scrape."""
    last: dict[str, float] = {}

    def empty() -> bool:
        nonlocal last
        last = metrics(client)
        return metric(last, "engagement_buffer_items") == 0

    if not poll_until(empty, timeout_s, 0.02):
        raise BenchError(f"view buffer not drained after {timeout_s}s: {last.get('engagement_buffer_items')}")
    return last


# -- the benchmarks -------------------------------------------------------------------------------------


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
            res["rounds"].append(row)
        bare_rps = [row["bare"]["requests_per_s"] for row in res["rounds"]]
        res["bare_median_cpu_share"] = statistics.median(
            row["bare"]["server_cpu_share"] for row in res["rounds"]
        )
        res["bare_median_rps"] = statistics.median(bare_rps)
        res["bare_rps"] = bare_rps
        res["valid"] = all(
            row["bare"]["non_2xx"] == 0 and row["bare"]["socket_errors"] == 0 for row in res["rounds"]
        )
        if real is not None:
            assert client is not None and backends is not None
            real_rps = [row["real"]["requests_per_s"] for row in res["rounds"]]
            res["real_rps"] = real_rps
            res["real_median_rps"] = statistics.median(real_rps)
            res["real_median_cpu_share"] = statistics.median(
                row["real"]["server_cpu_share"] for row in res["rounds"]
            )
            res["ratio_median"] = statistics.median(row["ratio"] for row in res["rounds"])
            cpu_ratios = [row["cpu_ratio"] for row in res["rounds"] if "cpu_ratio" in row]
            # Requests per CPU-second of the server: less sensitive to other load on a shared machine.
            res["cpu_ratio_median"] = statistics.median(cpu_ratios) if cpu_ratios else None
            res["valid"] = res["valid"] and all(
                row["real"]["non_2xx"] == 0 and row["real"]["socket_errors"] == 0 and row["real"]["count_ok"]
                for row in res["rounds"]
            )
            # One run of exactly N views over the same pool, nothing in flight at the end: exact match.
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
            res["exact_count"] = {
                "sent": w.get("sent"),
                "answered_202": w.get("ok"),
                "other_status": w.get("err"),
                "counted_in_redis": counted,
                "ok": w.get("ok") == EXACT_VIEWS and counted == EXACT_VIEWS and w.get("err") == 0,
            }
            res["valid"] = res["valid"] and res["exact_count"]["ok"]
    finally:
        if client:
            client.close()
        for server in (real, bare):
            if server is not None:
                server.stop()


def bench_bulk(
    ns: argparse.Namespace, backends: Backends, real: AppServer, workdir: Path, out: dict[str, Any]
) -> None:
    from loadtest.bodies import ingest_token, write_bodies

    token = ingest_token(backends.env["ENGAGEMENT_JWT_SECRET"])
    res: dict[str, Any] = {
        "events_per_body": BULK_EVENTS,
        "bodies": BULK_BODIES,
        "pool": BULK_POOL,
        "connections": BULK_CONNECTIONS,
        "duration_s": ns.duration,
        "rounds": [],
    }
    out["bulk"] = res
    client = Http(real.port)
    try:
        warm, _ = write_bodies(workdir / "bodies", 2, BULK_EVENTS, "bw-", BULK_POOL)
        log("warming up bulk")
        run_wrk("post_batch.lua", real.url, WARMUP_S, BULK_CONNECTIONS, [token, *map(str, warm)])
        wait_drained(client)
        for r in range(ns.runs):
            prefix = f"b{r}-"
            paths, ids = write_bodies(workdir / "bodies", BULK_BODIES, BULK_EVENTS, prefix, BULK_POOL)
            w = real.measure("post_batch.lua", ns.duration, BULK_CONNECTIONS, [token, *map(str, paths)])
            w["events_per_s"] = w["ok_2xx"] * BULK_EVENTS / w["duration_s"]
            w["events_per_server_cpu_s"] = (
                w["ok_2xx"] * BULK_EVENTS / w["server_cpu_s"] if w["server_cpu_s"] else None
            )
            wait_drained(client)
            counted = backends.views_of(ids)
            w["views_counted_in_redis"] = counted
            # Up to -c batches may have been in flight when wrk stopped its clock.
            w["count_ok"] = (
                w["ok_2xx"] * BULK_EVENTS <= counted <= (w["ok_2xx"] + BULK_CONNECTIONS) * BULK_EVENTS
            )
            log(
                f"bulk round {r + 1}: {w['events_per_s']:,.0f} events/s "
                f"({w['requests_per_s']:.0f} batches/s), server CPU share {w['server_cpu_share']:.2f}, "
                f"non-2xx {w['non_2xx']}, counted {counted}"
            )
            res["rounds"].append(w)
        res["events_per_s"] = [w["events_per_s"] for w in res["rounds"]]
        res["median_events_per_s"] = statistics.median(res["events_per_s"])
        per_cpu = [w["events_per_server_cpu_s"] for w in res["rounds"] if w["events_per_server_cpu_s"]]
        res["median_events_per_server_cpu_s"] = statistics.median(per_cpu) if per_cpu else None
        res["valid"] = all(
            w["non_2xx"] == 0 and w["socket_errors"] == 0 and w["count_ok"] for w in res["rounds"]
        )
    finally:
        client.close()


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


def flush_once(backends: Backends) -> dict[str, Any]:
    before = backends.counters_writes()
    t0 = time.monotonic()
    output = run_cli(["flusher", "--once"], backends.env)
    elapsed = time.monotonic() - t0
    m = re.search(r"flushed (\d+) batches, (\d+) rows", output)
    rows = int(m.group(2)) if m else None
    # Postgres publishes a backend's table statistics when it exits; the flusher's have just exited.
    delta = poll_until(lambda: (backends.counters_writes() - before) or None, 5, 0.05) or 0
    if rows is not None and delta < rows:
        delta = (
            poll_until(lambda: d if (d := backends.counters_writes() - before) >= rows else None, 5) or delta
        )
    log(f"flusher --once: reported {rows} rows, content_counters writes {delta}, {elapsed:.1f}s")
    return {
        "rows_reported": rows,
        "content_counters_writes": delta,
        "seconds": round(elapsed, 2),
        "output_tail": output.strip().splitlines()[-3:],
    }


# -- report ---------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(OSError):
        models = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        info["cpu"] = models[0] if models else None
    with contextlib.suppress(Exception):
        import granian

        info["granian"] = granian.__version__
    with contextlib.suppress(Exception):
        info["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0]
    with contextlib.suppress(Exception):
        info["git"] = (
            subprocess.run(
                ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    return info


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def summary(out: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    s = out.get("single")
    if s and s.get("rounds"):
        rows.append(("single: bare app req/s (median)", f"{s['bare_median_rps']:,.0f}", "calibration", "-"))
        rows.append(
            ("single: bare server's CPU share (median)", f"{s['bare_median_cpu_share']:.2f}", "~1.0", "-")
        )
        if "real_median_rps" in s:
            rows.append(("single: engagementd req/s (median)", f"{s['real_median_rps']:,.0f}", "", "-"))
            rows.append(
                ("single: engagementd CPU share (median)", f"{s['real_median_cpu_share']:.2f}", "~1.0", "-")
            )
            rows.append(
                (
                    "single: ratio real/bare (median)",
                    f"{s['ratio_median']:.3f}",
                    ">= 0.85",
                    verdict(s["ratio_median"] >= 0.85),
                )
            )
            if s.get("cpu_ratio_median") is not None:
                rows.append(
                    (
                        "single: ratio per server CPU-second (median)",
                        f"{s['cpu_ratio_median']:.3f}",
                        "(noise check)",
                        "-",
                    )
                )
            ex = s.get("exact_count", {})
            rows.append(
                (
                    "single: exact count (N views = 202s = Redis)",
                    f"{ex.get('counted_in_redis')}/{ex.get('answered_202')}",
                    f"{EXACT_VIEWS}",
                    verdict(ex.get("ok")),
                )
            )
        rows.append(
            ("single: run valid (no non-2xx, counts)", str(s.get("valid")), "True", verdict(s.get("valid")))
        )
    b = out.get("bulk")
    if b and b.get("rounds"):
        rows.append(
            (
                "bulk: events/s (median)",
                f"{b['median_events_per_s']:,.0f}",
                ">= 1,000,000",
                verdict(b["median_events_per_s"] >= 1_000_000),
            )
        )
        if b.get("median_events_per_server_cpu_s"):
            rows.append(
                (
                    "bulk: events per server CPU-second (median)",
                    f"{b['median_events_per_server_cpu_s']:,.0f}",
                    "",
                    "-",
                )
            )
        rows.append(("bulk: run valid", str(b.get("valid")), "True", verdict(b.get("valid"))))
    v = out.get("viral")
    if v and "commands_per_1000_views" in v:
        rows.append(("viral: views/s", f"{v['views_per_s']:,.0f}", "", "-"))
        rows.append(
            (
                "viral: Redis commands per 1,000 views",
                f"{v['commands_per_1000_views']:.2f}",
                "<= 10",
                verdict(v["commands_per_1000_views"] <= 10),
            )
        )
        rows.append(("viral: run valid (all counted)", str(v.get("valid")), "True", verdict(v.get("valid"))))
        f = v.get("flush", {})
        rows.append(
            (
                "flush: content_counters writes for 1 item",
                str(f.get("content_counters_writes")),
                "1",
                verdict(f.get("content_counters_writes") == 1),
            )
        )
        pre = v.get("pre_flush", {})
        rows.append(
            (
                "flush: earlier runs' rows (reported / written)",
                f"{pre.get('rows_reported')} / {pre.get('content_counters_writes')}",
                "equal",
                verdict(pre.get("rows_reported") == pre.get("content_counters_writes")),
            )
        )
    for name, err in out.get("errors", {}).items():
        rows.append((f"{name}: ERROR", err.splitlines()[0][:60] if err else "", "", "FAIL"))
    m = out["machine"]
    head = (
        f"engagementd load benchmark  {m['time']}  nproc={m['nproc']}  load avg start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])}  end "
        f"{' '.join(f'{x:.2f}' for x in m.get('loadavg_end', []))}"
    )
    widths = [max(len(r[i]) for r in rows + [("measure", "value", "target", "")]) for i in range(4)]
    lines = [head, ""]
    for r in [("measure", "value", "target", ""), *rows]:
        cells = zip(r, widths, strict=True)
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run")
    parser.add_argument("--only", choices=["single", "bulk", "viral"])
    parser.add_argument(
        "--bare-only",
        action="store_true",
        help="the bare app alone (no Redis, Postgres or engagementd): a calibration figure",
    )
    parser.add_argument("--viral-views", type=int, default=200_000)
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    ns = parser.parse_args(argv)
    if ns.runs < 1 or not 1 <= ns.duration <= 120:
        parser.error("--runs must be >= 1 and --duration between 1 and 120")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install -y wrk")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(CHILDREN.stop_all)
    ncpu = len(os.sched_getaffinity(0))
    global SERVER_CPU, CLIENT_CPU
    if ncpu >= 2:
        cpus = sorted(os.sched_getaffinity(0))
        SERVER_CPU, CLIENT_CPU = cpus[0], cpus[1]
        os.sched_setaffinity(0, {CLIENT_CPU})  # inherited by Redis, Postgres and every other child
    else:
        log("fewer than 2 CPUs: no pinning")

    out: dict[str, Any] = {
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(ns).items()},
        "errors": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="engagementd-bench-"))
    os.chmod(workdir, 0o755)
    backends: Backends | None = None
    env = dict(os.environ)
    try:
        if not ns.bare_only:
            try:
                backends = Backends(workdir)
                env = backends.env
            except Exception as exc:  # noqa: BLE001 - reported, and the bare calibration still runs
                out["errors"]["setup"] = f"{type(exc).__name__}: {exc}"
                log(f"private Redis/Postgres or migrate failed, measuring the bare app only: {exc}")
        if ns.only in (None, "single"):
            try:
                bench_single(ns, env, backends, workdir, out)
            except BenchError as exc:
                out["errors"]["single"] = str(exc)
                log(f"single failed: {exc}")
        real: AppServer | None = None
        if backends is not None and ns.only in (None, "bulk", "viral"):
            try:
                real = AppServer("real", env, workdir)
                run_wrk("post_view.lua", real.url, WARMUP_S, CONNECTIONS, ["warm-", str(SINGLE_POOL)])
            except BenchError as exc:
                out["errors"]["api"] = str(exc)
                log(f"engagementd api failed: {exc}")
        if real is not None:
            try:
                for name, fn in (
                    ("bulk", lambda: bench_bulk(ns, backends, real, workdir, out)),
                    ("viral", lambda: bench_viral(ns, backends, real, out)),
                ):
                    if ns.only in (None, name):
                        try:
                            fn()
                        except BenchError as exc:
                            out["errors"][name] = str(exc)
                            log(f"{name} failed: {exc}")
            finally:
                real.stop()
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
        print(out["summary"])
        print(f"\nfull results: {ns.output}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
