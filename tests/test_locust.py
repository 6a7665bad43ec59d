"""The locust scenarios (loadtest/locustfile.py) as load testers run them, headless, against a real api:
each for a few seconds, with zero failures (issue 18)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_fixtures import JWT_SECRET, ROOT

from daemon.settings import Settings

SCENARIOS = ("viral", "views", "likes", "bulk", "browse", "live")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_runs_without_failures(
    start_api, migrated: Settings, tmp_path: Path, scenario: str
) -> None:
    api = start_api(migrated.replace(buffer_flush_interval_ms=50))
    prefix = tmp_path / scenario
    env = {**os.environ, "ENGAGEMENT_JWT_SECRET": JWT_SECRET, "LOADTEST_CONTENT_POOL": "200"}
    ran = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
            "--tags", scenario, "-u", "5", "-r", "5", "-t", "4s", "--host", api.base_url,
            "--csv", str(prefix), "--only-summary",
        ],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    with open(f"{prefix}_stats.csv") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0, rows
    assert int(total["Failure Count"]) == 0, {n: r["Failure Count"] for n, r in rows.items()}
