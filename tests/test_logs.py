"""Logs operators can ship (issue 18): ENGAGEMENT_LOG_FORMAT=json gives one JSON object per line, with
the request id where a request sent one; every role starts with one line naming its event loop (uvloop)
and its configuration, secrets masked."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from service_fixtures import ApiProcess, run_cli, wait_until

from daemon.settings import Settings

SECRET = "a-jwt-secret-nobody-may-read-0123456789abcdef"


def _json_lines(text: str) -> list[dict]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    return lines


def _start_line(lines: list[dict], role: str) -> str:
    (found,) = [
        line["message"] for line in lines if line["message"].startswith(f"engagementd {role} starting")
    ]
    return found


def _settings(migrated: Settings) -> Settings:
    # trust auth ignores the password: it is there to be masked
    url = migrated.database_url.replace("postgres@", "postgres:hunter2-password@")
    return migrated.replace(log_format="json", jwt_secret=SECRET, database_url=url)


def test_flusher_and_reconcile_log_json_on_uvloop_with_secrets_masked(migrated: Settings) -> None:
    settings = _settings(migrated)
    for role, args in (("flusher --once", ["flusher", "--once"]), ("reconcile", ["reconcile"])):
        ran = run_cli(settings, *args)
        assert ran.returncode == 0, ran.stderr
        line = _start_line(_json_lines(ran.stderr), role)
        assert "(event loop: uvloop)" in line, line
        assert (
            f'"shards":{settings.shards}' in line
            and '"jwt_secret":"set"' in line
            and ":***@127.0.0.1" in line
        ), line
        assert SECRET not in ran.stderr and "hunter2" not in ran.stderr


def test_api_logs_json_with_the_request_id(migrated: Settings, tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    api = ApiProcess(_settings(migrated), log_path=log)
    try:
        with socket.create_connection(("127.0.0.1", api.port)) as sock:  # a hang-up mid-body: one log line
            sock.sendall(
                b"POST /api/v1/content/clip/views HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-42\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}"
            )
        wait_until(lambda: "req-42" in log.read_text(), what="the hang-up's log line")
    finally:
        api.stop()
    lines = _json_lines(log.read_text())
    assert "(event loop: uvloop)" in _start_line(lines, "api")
    (hang_up,) = [line for line in lines if line.get("request_id") == "req-42"]
    assert "closed the connection" in hang_up["message"], hang_up
    assert SECRET not in log.read_text() and "hunter2" not in log.read_text()
