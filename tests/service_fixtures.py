"""Fixtures running the service itself: a migrated database, api processes, the flusher, tokens.

The api runs as a real ``engagementd api`` process over real HTTP; the flusher runs as
``engagementd flusher`` processes (so tests can SIGKILL them) or in process for one-pass checks.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import jwt
import pytest
import redis

from daemon import db
from daemon.proc.servers import free_port
from daemon.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
# every timestamp of the API's JSON (daemon/timefmt.py)
API_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def wait_until(check: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail the test with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def token(sub: str = "user-1", scope: str = "", secret: str = JWT_SECRET, **claims: object) -> str:
    body: dict[str, object] = {"sub": sub, "exp": int(time.time()) + 3600, **claims}
    if scope:
        body["scope"] = scope
    return jwt.encode(body, secret, algorithm="HS256")


def service_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.as_env(), "PYTHONPATH": str(ROOT)}


class ApiProcess:
    """``engagementd api`` on a free port; ``stop()`` sends SIGTERM and waits (graceful drain)."""

    def __init__(self, settings: Settings, workers: int = 1, log_path: Path | None = None) -> None:
        """``log_path``: where its stdout and stderr go (else the test's own)."""
        self.settings = settings
        self.port = free_port()
        self._log = open(log_path, "wb") if log_path is not None else None  # noqa: SIM115 - closed in stop/kill
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.proc.cli",
                "api",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env=service_env(settings),
            cwd=ROOT,
            start_new_session=True,
            stdout=self._log,
            stderr=self._log,
        )
        self.client = httpx.Client(base_url=self.base_url, timeout=10.0)
        wait_until(self._healthy, 30, "the api to answer /healthz")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"engagementd api exited with {self.proc.returncode}")
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self.client.close()
            if self._log is not None:
                self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.client.close()
        if self._log is not None:
            self._log.close()


def run_flusher_once(settings: Settings, timeout_s: float = 120.0) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "daemon.proc.cli", "flusher", "--once"],
        env=service_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def pending_redis_work(redis_url: str) -> int:
    """Delta and batch keys (hashes and view drain lists) still waiting for the flusher."""
    with redis.Redis.from_url(redis_url) as r:
        kinds = ("delta", "vdelta", "batch", "vbatch")
        return sum(1 for kind in kinds for _ in r.scan_iter(match=f"eng:*:{kind}"))


def counters_in_postgres(database_url: str) -> dict[str, dict[str, int]]:
    async def fetch() -> dict[str, dict[str, int]]:
        conn = await db.connect(Settings.from_env({}, database_url=database_url))
        try:
            rows = await conn.fetch("SELECT * FROM content_counters")
        finally:
            await conn.close()
        return {
            r["content_id"]: {k: v for k, v in r.items() if k not in ("content_id", "updated_at")}
            for r in rows
        }

    return asyncio.run(fetch())


@pytest.fixture
def migrated(settings: Settings) -> Settings:
    """Settings whose database has the schema, with the test JWT secret."""
    asyncio.run(db.migrate(settings))
    return settings.replace(jwt_secret=JWT_SECRET)


@pytest.fixture
def api(migrated: Settings) -> Iterator[ApiProcess]:
    proc = ApiProcess(migrated)
    yield proc
    proc.kill()


@pytest.fixture
def start_api(migrated: Settings) -> Iterator[Callable[..., ApiProcess]]:
    started: list[ApiProcess] = []

    def start(settings: Settings | None = None, workers: int = 1) -> ApiProcess:
        proc = ApiProcess(settings or migrated, workers)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def cli_reconcile(settings: Settings) -> str:
    """``engagementd reconcile`` as a process; its report (stdout). Fails the test on a non-zero exit."""
    return cli(settings, "reconcile")


def cli(settings: Settings, *args: str) -> str:
    """``engagementd <args>`` as a process; its stdout. Fails the test on a non-zero exit."""
    out = run_cli(settings, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def run_cli(settings: Settings, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``engagementd <args>`` as a process, whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "daemon.proc.cli", *args],
        env=service_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    """One query on a connection of its own."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())
