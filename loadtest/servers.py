"""The processes under test: a granian server (bare reference or engagementd api) pinned to the
server CPU, and the private Redis and Postgres the api runs against."""

from __future__ import annotations

import contextlib
import os
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loadtest.httpc import wait_http
from loadtest.procs import (
    CHILDREN,
    CPUS,
    BenchError,
    engagementd_cmd,
    free_port,
    group_cpu_seconds,
    log,
    run_cli,
    tail,
)
from loadtest.wrkrun import run_wrk

# The reference servers of loadtest/ (anything else is ``engagementd api``).
REFERENCE_APPS = {"bare": "loadtest.bare_app", "naive": "loadtest.naive_likes_app"}


class AppServer:
    """One granian server (a reference app or engagementd api) pinned to the server CPU."""

    def __init__(self, kind: str, env: dict[str, str], workdir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = workdir / f"{kind}.log"
        if kind in REFERENCE_APPS:
            module = REFERENCE_APPS[kind]
            cmd = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port)]
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
        self.proc = CHILDREN.spawn(kind, cmd, env, self.log_path, cpu=CPUS.server)
        probe = ("POST", "/api/v1/content/__probe/views", 202) if kind == "bare" else ("GET", "/healthz", 200)
        wait_http(self.port, self.proc, probe[0], probe[1], probe[2], self.log_path)
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every process of the server's process group."""
        return group_cpu_seconds(self.proc.pid)

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
    """Private Redis and Postgres from daemon/proc/servers.py, migrated; the environment of the service."""

    def __init__(self, workdir: Path) -> None:
        from daemon.proc.servers import PostgresServer, RedisServer

        self.redis_server = RedisServer(workdir / "redis", appendonly=True)
        self.pg = PostgresServer(workdir / "pg", fast=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.redis_server.start()
        with contextlib.suppress(OSError):  # stands in for a dedicated Redis: not queued behind wrk
            os.setpriority(os.PRIO_PROCESS, self.redis_server.proc.pid, -10)
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
                pipe.hget(f"eng:{{s:{shard}}}:c:{cid}", "views")
            total += sum(int(v) for v in pipe.execute() if v is not None)
        return total

    def counters_writes(self) -> int:
        """Rows written to content_counters so far (pg_stat_user_tables n_tup_ins + n_tup_upd)."""
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
