"""schemathesis against a live ``engagementd api`` on private Redis and Postgres, loading the document
the api serves at /openapi.json: no request the document allows (or one it forbids) gets a 5xx, and
every answer conforms to the document (status documented, content type, body schema, headers).

It runs the schemathesis CLI (``st run``) as a subprocess: its phases (examples, coverage: boundary and
invalid values; fuzzing; stateful) are what a developer runs by hand (docs/api.md, "API contract"). The short
run and a run with Redis stopped are part of every test run; a longer one is marked slow. All send a
token whose scope holds ``ingest`` and ``internal``, so every operation is reached past its auth check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from service_fixtures import ROOT, token

from api.app import ROUTES

CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"


def st_run(
    base_url: str, workdir: Path, *options: str, timeout_s: float, config: Path = CONFIG
) -> subprocess.CompletedProcess[str]:
    """``st run`` against ``base_url``'s own document, derandomized (the same cases every run)."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
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


def answered(har: Path, statuses: range) -> set[tuple[str, str]]:
    """(METHOD, route) of every request of a schemathesis HAR report answered with one of ``statuses``."""
    found = set()
    for entry in json.loads(har.read_text())["log"]["entries"]:
        method, path = entry["request"]["method"], unquote(urlsplit(entry["request"]["url"]).path)
        if entry["response"]["status"] not in statuses:
            continue
        for route in ROUTES:
            if method in (route.methods or ()) and route.path_regex.fullmatch(path):
                found.add((method, route.path))
    return found


# Operations that need no id the run must first create: each must be reached past validation at least
# once. The /users/me ones act on the token's sub (the fuzzer's user).
REACHED = {
    ("PUT", "/api/v1/users/me/history/{contentId}"),
    ("GET", "/api/v1/users/me/history"),
    ("DELETE", "/api/v1/users/me/history"),
    ("POST", "/api/v1/users/me/playlists"),
    ("GET", "/api/v1/users/me/playlists"),
    ("POST", "/api/v1/content/{contentId}/comments"),
    ("GET", "/api/v1/content/{contentId}/comments"),
    ("DELETE", "/internal/v1/users/{userId}"),
    ("POST", "/api/v1/content/{contentId}/like"),
    ("POST", "/api/v1/views/batch"),
}


def test_no_request_gets_a_server_error_and_every_answer_conforms(fuzzed_api, tmp_path):
    har = tmp_path / "run.har"
    result = st_run(
        fuzzed_api.base_url,
        tmp_path,
        "--max-examples",
        "5",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        timeout_s=240,
    )

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert REACHED - answered(har, range(200, 300)) == set(), "operations the fuzzer never got a 2xx from"


# One operation per rate-limited action (daemon/ratelimit.py actions) that a run reaches with no id to create.
LIMITED = {
    ("POST", "/api/v1/content/{contentId}/like"),
    ("POST", "/api/v1/content/{contentId}/comments"),
    ("PUT", "/api/v1/users/me/history/{contentId}"),
    ("POST", "/api/v1/users/me/playlists"),
}
ACTIONS = ("like", "dislike", "subscribe", "share", "comment", "history", "playlist")


def test_rate_limited_answers_are_documented_429s(start_api, migrated, tmp_path):
    # Every action limited to one request an hour: past the first, the fuzzer's user gets 429s, and
    # each must be documented by its operation and conform (Retry-After header, error body).
    api = start_api(migrated.replace(rate_limits=",".join(f"{a}=1/1h" for a in ACTIONS)))
    har = tmp_path / "run.har"
    result = st_run(
        api.base_url,
        tmp_path,
        "--max-examples",
        "3",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        timeout_s=240,
    )

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert LIMITED - answered(har, range(429, 430)) == set(), "operations the fuzzer never got a 429 from"


def answers(har: Path) -> list[tuple[tuple[str, str], int, str | None]]:
    """((METHOD, route), status, the body's ``error`` field or None) of every answer of a HAR report; the
    route is the request's path when no route matches it."""
    found = []
    for entry in json.loads(har.read_text())["log"]["entries"]:
        method, path = entry["request"]["method"], unquote(urlsplit(entry["request"]["url"]).path)
        route = next(
            (r.path for r in ROUTES if method in (r.methods or ()) and r.path_regex.fullmatch(path)), path
        )
        text = entry["response"].get("content", {}).get("text") or ""
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        found.append(((method, route), entry["response"]["status"], error))
    return found


# Operations that cannot serve a valid request without Redis (503), each with an error only its input
# validation gives: seen in the Redis-down run, they prove that validation ran before Redis was needed.
VALIDATED_WITHOUT_REDIS = {
    ("POST", "/api/v1/content/{contentId}/views"): "invalid_watch_seconds",
    ("POST", "/api/v1/views/batch"): "invalid_item",
    ("POST", "/api/v1/content/{contentId}/shares"): "invalid_platform",
    ("PUT", "/internal/v1/content/{contentId}"): "invalid_content_type",
    ("GET", "/api/v1/trending"): "invalid_window",
    ("DELETE", "/internal/v1/users/{userId}"): "invalid_user_id",
}
# Operations that answer from Postgres while Redis is down (docs/api.md, "While Redis is unreachable").
FALLBACKS = {
    ("POST", "/api/v1/content/{contentId}/like"),
    ("POST", "/api/v1/creators/{creatorId}/subscribe"),
    ("GET", "/api/v1/content/{contentId}/stats"),
    ("GET", "/api/v1/creators/{creatorId}"),
    ("POST", "/api/v1/content/{contentId}/comments"),
}


def test_with_redis_stopped_the_only_server_errors_are_documented_503s(fuzzed_api, redis_server, tmp_path):
    # The same run with Redis down: the fallbacks to Postgres answer, and what cannot be served is a
    # documented 503 with Retry-After (not_a_server_error lets 503 through; status and header
    # conformance check that the operation documents it).
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        CONFIG.read_text() + 'not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", 503]\n'
    )
    har = tmp_path / "run.har"
    redis_server.kill()
    try:
        result = st_run(
            fuzzed_api.base_url,
            tmp_path,
            "--max-examples",
            "5",
            "--report",
            "har",
            "--report-har-path",
            str(har),
            timeout_s=240,
            config=config,
        )
    finally:
        redis_server.start()

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    found = answers(har)
    # Redis was down for the whole run: readiness said so every time it was asked
    assert {error for op, status, error in found if op == ("GET", "/readyz")} == {"not_ready"}
    # Every answer that is not a success names its error (the machine-readable ``error`` field), and the
    # only 5xx are 503s with a documented error
    assert [a for a in found if a[1] >= 400 and not a[2]] == []
    assert {error for _, status, error in found if status >= 500} <= {
        "unavailable",
        "idempotency_unavailable",
        "purge_incomplete",
        "not_ready",
    }
    assert {status for _, status, _ in found if status >= 500} == {503}
    # The operations that need Redis refused what was valid with a 503, yet still checked every request
    # first: invalid ones got their specific 4xx, not a 503 (so requests reached validation)
    for op, error in VALIDATED_WITHOUT_REDIS.items():
        got = {e for o, status, e in found if o == op}
        assert error in got, (op, got)
        assert got & {"unavailable", "idempotency_unavailable", "purge_incomplete"}, (op, got)
    # And the operations with a Postgres fallback answered with a success
    assert FALLBACKS - {op for op, status, _ in found if 200 <= status < 300} == set()


@pytest.mark.slow
def test_a_longer_fuzz_run_finds_no_server_error_and_no_nonconforming_answer(fuzzed_api, tmp_path):
    result = st_run(fuzzed_api.base_url, tmp_path, "--max-examples", "25", timeout_s=600)

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
