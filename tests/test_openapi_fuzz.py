"""schemathesis against a live ``engagementd api`` on private Redis and Postgres, loading the document
the api serves at /openapi.json: no request the document allows (or one it forbids) gets a 5xx, and
every answer conforms to the document (status documented, content type, body schema, headers).

It runs the schemathesis CLI (``st run``) as a subprocess: its phases (examples, coverage: boundary and
invalid values; fuzzing; stateful) are what a developer runs by hand (README, "API contract"). The short
run is part of every test run; the long one is marked slow. Both send a token whose scope holds
``ingest`` and ``internal``, so every operation is reached past its auth check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_fixtures import ROOT, token

CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"


def st_run(base_url: str, workdir: Path, *options: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``st run`` against ``base_url``'s own document, seeded and derandomized."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token('fuzz-user', scope='ingest internal')}",
        "--workers",
        "1",
        "--no-color",
        *options,
    ]
    env = {"PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}", "SCHEMATHESIS_HOOKS": "schemathesis_hooks"}
    return subprocess.run(
        command, cwd=workdir, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout_s
    )


@pytest.fixture
def fuzzed_api(start_api, migrated):  # type: ignore[no-untyped-def]
    # No rate limits: the fuzzer is one user, and a 429 on every like would hide the like path.
    return start_api(migrated.replace(rate_limits=""))


def test_no_request_gets_a_server_error_and_every_answer_conforms(fuzzed_api, tmp_path):
    result = st_run(fuzzed_api.base_url, tmp_path, "--max-examples", "5", timeout_s=240)

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]


@pytest.mark.slow
def test_a_longer_fuzz_run_finds_no_server_error_and_no_nonconforming_answer(fuzzed_api, tmp_path):
    result = st_run(fuzzed_api.base_url, tmp_path, "--max-examples", "40", timeout_s=600)

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
