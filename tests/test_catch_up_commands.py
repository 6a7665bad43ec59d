"""The catch-up commands operators script (issue 18): ``flusher --once`` does not exit 0 having flushed
nothing while a killed flusher's leases cover shards, nor ``consume --once`` while a killed member holds
partitions: each waits up to ``--wait-s``, then says what it left and exits 3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from consumer_helpers import INGEST, ConsumerProcess, envelope, produce
from lease_helpers import held_leases_sync
from service_fixtures import ROOT, counters_in_postgres, run_cli, service_env, token, wait_until

from daemon.settings import Settings


def _flusher_once(settings: Settings, wait_s: float) -> subprocess.CompletedProcess[str]:
    return run_cli(settings, "flusher", "--once", "--wait-s", str(wait_s))


def test_flusher_once_waits_for_a_killed_flushers_leases(
    start_api, migrated: Settings, redis_url: str
) -> None:
    settings = migrated.replace(flush_lease_ms=3_000, flush_interval_ms=100)
    api = start_api(settings)
    items = [f"once-{n}" for n in range(20)]
    r = api.client.post(
        "/api/v1/views/batch",
        json=[{"content_id": item} for item in items],
        headers={"Authorization": f"Bearer {token('ingester', scope='ingest')}"},
    )
    assert r.status_code == 202, r.text
    wait_until(lambda: all(api.client.get(f"/api/v1/content/{i}/stats").json()["views"] == 1 for i in items))
    # Given a flusher killed mid-pass: it captured the shards' batches (their leases held), then hung on
    # a table lock, then died
    lock = subprocess.Popen(
        [
            "psql",
            settings.database_url,
            "-c",
            "BEGIN; LOCK TABLE content_counters IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    flusher = subprocess.Popen(
        [sys.executable, "-m", "daemon.proc.cli", "flusher"], env=service_env(settings), cwd=ROOT
    )
    try:
        wait_until(lambda: held_leases_sync(redis_url) > 0, what="the flusher to capture under its leases")
        os.kill(flusher.pid, signal.SIGKILL)
        flusher.wait()
    finally:
        lock.kill()
        lock.wait()
        # (a backend in pg_sleep does not notice its client is gone: end it, and its lock)
        stop = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%'"
        subprocess.run(
            ["psql", settings.database_url, "-c", f"{stop} AND pid <> pg_backend_pid()"],
            check=True,
            capture_output=True,
        )
    held = held_leases_sync(redis_url)
    assert held > 0
    # When flusher --once may not wait: it says which shards it left, and exits 3
    short = _flusher_once(settings, 0)
    assert short.returncode == 3, (short.stdout, short.stderr)
    assert f"{held} shards still leased by another flusher" in short.stderr, short.stderr
    assert counters_in_postgres(settings.database_url) == {}
    # When it may wait longer than the dead flusher's lease: everything is flushed, exactly
    done = _flusher_once(settings, 30)
    assert done.returncode == 0, (done.stdout, done.stderr)
    counters = counters_in_postgres(settings.database_url)
    assert {item: row["views"] for item, row in counters.items()} == dict.fromkeys(items, 1)


@pytest.mark.slow
def test_consume_once_waits_for_partitions_a_killed_member_holds(
    start_api, migrated: Settings, kafka_cluster
) -> None:
    """The classic protocol (production's): a SIGKILLed member keeps its partitions until its session
    times out. consume --once does not call that "caught up": it waits up to --wait-s, then names them
    and exits 3; given long enough, it gets them and consumes everything, exactly."""
    settings = migrated.replace(
        kafka_bootstrap=kafka_cluster.bootstrap_servers,
        consumer_group_protocol="classic",
        consumer_session_timeout_ms=6_000,
    )
    api = start_api(migrated)  # (no Kafka: only to read the counts)

    def views() -> int:
        return api.client.get("/api/v1/content/once-k/stats").json()["views"]

    view = envelope({"event_type": "media_started", "content_id": "once-k"})
    produce(settings.kafka_bootstrap, INGEST, [(f"u{n}", view) for n in range(20)])
    member = ConsumerProcess(settings)
    try:
        wait_until(lambda: views() == 20, 60, "the first member to consume 20 views")
    finally:
        member.kill()
    produce(settings.kafka_bootstrap, INGEST, [(f"v{n}", view) for n in range(10)])
    short = run_cli(settings, "consume", "--once", "--wait-s", "1")
    assert short.returncode == 3, (short.stdout, short.stderr[-2000:])
    assert "assigned to another member of group engagementd" in short.stderr, short.stderr[-2000:]
    done = run_cli(settings, "consume", "--once", "--wait-s", "90")
    assert done.returncode == 0, done.stderr[-2000:]
    assert views() == 30
