"""The CLI contract: migrate is idempotent, the flusher serves metrics, dev runs and stops everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import redis
from consumer_helpers import INGEST, envelope, produce
from service_fixtures import ROOT, service_env, wait_until

from daemon.proc.servers import free_port
from daemon.settings import Settings
from lua import Scripts


def _cli(settings: Settings, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.proc.cli", *args],
        env=service_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_migrate_creates_the_schema_once_and_is_idempotent(settings: Settings) -> None:
    first = _cli(settings, "migrate")
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial" in first.stdout
    again = _cli(settings, "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "schema up to date (0 applied)"


def test_migrate_deletes_the_function_libraries_of_other_versions(settings: Settings) -> None:
    # Given Redis holding the function library of an older version of the code (a deploy ago)
    old = "engagementd_0123456789abcdef"
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
        client.function_load(f"#!lua name={old}\nredis.register_function('f_old', function() return 1 end)\n")
        # When the new version's migrate runs
        out = _cli(settings, "migrate")
        # Then it says so, and only the current version's library is left
        assert out.returncode == 0, out.stderr
        assert f"function libraries of other versions deleted: {old}" in out.stdout
        current = Scripts.load().rate_limit.library
        assert current is not None
        libraries = [dict(zip(lib[::2], lib[1::2], strict=True)) for lib in client.function_list()]
        assert [lib["library_name"] for lib in libraries] == [current.name]


def test_a_bad_setting_exits_2_with_its_name(settings: Settings) -> None:
    env = {**service_env(settings), "ENGAGEMENT_SHARDS": "many"}
    out = subprocess.run(
        [sys.executable, "-m", "daemon.proc.cli", "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "ENGAGEMENT_SHARDS" in out.stderr


def test_a_flusher_with_another_shard_count_refuses_to_start(migrated: Settings) -> None:
    assert _cli(migrated, "flusher", "--once").returncode == 0  # records 16 shards
    out = _cli(migrated.replace(shards=32), "flusher", "--once")
    assert out.returncode == 2
    assert "ENGAGEMENT_SHARDS=32" in out.stderr


def test_the_flusher_serves_its_metrics_and_stops_on_sigterm(migrated: Settings) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.proc.cli",
            "flusher",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        ],
        env=service_env(migrated),
        cwd=ROOT,
    )
    try:

        def scraped() -> str:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics").text
            except httpx.TransportError:
                return ""

        wait_until(lambda: "engagement_flush_lag_seconds" in scraped(), what="the flusher's /metrics")
        text = scraped()
        assert "engagement_flush_rows_total 0.0" in text
        assert "engagement_http_requests_total" not in text  # api metrics belong to the api
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _readme_tour() -> str:
    """The first ``sh`` block of the README: the five-line tour."""
    text = (ROOT / "README.md").read_text()
    return text.split("```sh\n", 1)[1].split("```", 1)[0]


def test_dev_on_a_taken_port_says_so_in_one_line_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ENGAGEMENT_DEV_DATA_DIR": str(tmp_path / "data")}
        out = subprocess.run(
            [sys.executable, "-m", "daemon.proc.cli", "dev", "--port", str(port)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert out.stdout == ""  # no banner, no tokens
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port} is already in use" in lines[0], out.stderr
    assert f"make run PORT={port + 1}" in lines[0]
    assert not (tmp_path / "data").exists()  # no Redis, no Postgres started


@pytest.mark.slow
def test_dev_mode_runs_everything_and_one_interrupt_stops_it_all() -> None:
    # Given `engagementd dev` on a fresh data folder (what `make run` starts)
    data = Path(tempfile.mkdtemp(prefix="engagementd-dev-", dir="/tmp"))
    data.chmod(0o755)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENGAGEMENT_DEV_DATA_DIR": str(data / "data")}
    env.pop("ENGAGEMENT_JWT_SECRET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.proc.cli", "dev", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return httpx.get(f"{base}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 120, "engagementd dev to be ready")
        # When a view is posted, it is counted, and reaches Postgres through the dev flusher
        assert httpx.post(f"{base}/api/v1/content/dev-item/views").status_code == 202
        wait_until(
            lambda: httpx.get(f"{base}/api/v1/content/dev-item/stats").json()["views"] == 1, what="stats"
        )
        # And the README's tour, run as written (but for the port and the data folder), says what its
        # comments say
        tour = _readme_tour().replace(":8080", f":{port}").replace(".data/", f"{data / 'data'}/")
        ran = subprocess.run(["bash", "-c", tour], capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        for expected in (
            "HTTP/1.1 202 Accepted",
            '{"state":"liked","likes":1,"dislikes":0}',
            '"body":"Great video!"',
            '"views":1,"likes":1,"dislikes":0,"comments":1',
            '"viewer_state":"liked"',
            "engagement_views_accepted_total 2.0",  # the tour's view and dev-item's
        ):
            assert expected in ran.stdout, (expected, ran.stdout)
        # And the purge example of docs/api.md removes what the tour wrote
        tokens = dict(line.split("=", 1) for line in (data / "data" / "tokens.env").read_text().split())
        purged = httpx.delete(
            f"{base}/internal/v1/users/dev-user", headers={"Authorization": f"Bearer {tokens['INTERNAL']}"}
        )
        assert purged.status_code == 202, purged.text
        assert purged.json()["removed"]["likes"] == 1 and purged.json()["removed"]["comments"] == 1
    finally:
        # Then one interrupt stops the api, the flusher and both servers, and dev exits 0
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "ingest token" in out and "internal token" in out and "tokens.env" in out
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout
    assert leftovers == "", leftovers


@pytest.mark.slow
def test_dev_mode_with_kafka_mock_consumes_engagement_ingest() -> None:
    # Given `engagementd dev` with ENGAGEMENT_KAFKA_BOOTSTRAP=mock
    data = Path(tempfile.mkdtemp(prefix="engagementd-dev-", dir="/tmp"))
    data.chmod(0o755)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENGAGEMENT_DEV_DATA_DIR": str(data / "data")}
    env["ENGAGEMENT_KAFKA_BOOTSTRAP"] = "mock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.proc.cli", "dev", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout is not None
        lines = []
        while not lines or "Ctrl-C stops everything" not in lines[-1]:
            lines.append(proc.stdout.readline())
            assert lines[-1], "dev exited before announcing"
        (consumer_line,) = [line for line in lines if line.strip().startswith("consumer")]
        bootstrap = consumer_line.split()[1].rstrip(",")

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 120, "engagementd dev to be ready")
        # When a playback service publishes a view to engagement.ingest
        produce(bootstrap, INGEST, [("u", envelope({"event_type": "media_started", "content_id": "k-item"}))])
        # Then the dev consumer counts it
        wait_until(
            lambda: httpx.get(f"{base}/api/v1/content/k-item/stats").json()["views"] == 1, 60, "the view"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    assert proc.returncode == 0
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout
    assert leftovers == "", leftovers
