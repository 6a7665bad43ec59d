"""A Redis that hangs instead of refusing (SIGSTOP): every request path bounds its wait on Redis by
ENGAGEMENT_REDIS_TIMEOUT_S, then falls back (Postgres) or answers 503 (issue 18)."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from service_fixtures import token

from daemon.settings import Settings

TIMEOUT_S = 1.0


def _auth(user: str, scope: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, scope=scope)}"}


REQUESTS = [
    ("PUT", "/api/v1/users/me/history/hang-1", {"progress_pct": 10, "position_seconds": 5}),
    ("GET", "/api/v1/content/hang-1/stats", None),
    ("POST", "/api/v1/content/hang-1/like", None),
    ("POST", "/api/v1/content/hang-1/dislike", None),
    ("POST", "/api/v1/creators/hang-creator/subscribe", None),
    ("GET", "/api/v1/creators/hang-creator", None),
    ("POST", "/api/v1/content/hang-1/comments", {"body": "hi"}),
    ("POST", "/api/v1/content/hang-1/shares", {"platform": "x"}),
    ("POST", "/api/v1/stats/batch", {"content_ids": ["hang-1", "hang-2"]}),
    ("GET", "/api/v1/trending", None),
    ("GET", "/api/v1/users/me/history/hang-1", None),
    ("POST", "/api/v1/content/hang-1/views", None),
]


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 18, open: calls in flight each wait ENGAGEMENT_REDIS_TIMEOUT_S, then fallbacks call Redis"
    " again; measured with a 1 s timeout: history PUT, subscribe, creator read, comment, share 4.3 s,"
    " like 3.0 s, batch stats 3.0 s, stats 2.0 s (a process-wide breaker is the planned fix)",
)
def test_every_request_bounds_its_wait_on_a_hung_redis(start_api, migrated: Settings, redis_server) -> None:
    api = start_api(migrated.replace(redis_timeout_s=TIMEOUT_S, rate_limits=""))
    for i, (method, path, body) in enumerate(REQUESTS):  # warm: connections made, keys loaded
        api.client.request(method, path, json=body, headers=_auth(f"warm-{i}"))
    pid = redis_server.proc.pid
    results: dict[str, tuple[int, float]] = {}
    os.kill(pid, signal.SIGSTOP)
    try:

        def call(i: int, method: str, path: str, body: object) -> None:
            started = time.monotonic()
            with httpx.Client(base_url=api.base_url, timeout=30) as client:
                r = client.request(method, path, json=body, headers=_auth(f"user-{i}"))
            results[f"{method} {path}"] = (r.status_code, round(time.monotonic() - started, 2))

        threads = [threading.Thread(target=call, args=(i, *req)) for i, req in enumerate(REQUESTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        os.kill(pid, signal.SIGCONT)
    slow = {k: v for k, v in results.items() if v[1] > 3 * TIMEOUT_S}
    assert not slow, results
