"""A small HTTP client for the harness's own requests: readiness probes, /metrics, draining."""

from __future__ import annotations

import http.client
import re
import subprocess
from pathlib import Path

from loadtest.procs import BenchError, poll_until, tail


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
    """Until ``method path`` answers ``expect`` (BenchError if the server exits or the deadline passes)."""
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
