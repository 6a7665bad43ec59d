"""Locust scenarios for people exploring the service by hand (the benchmark figures come from bench.py).

    ENGAGEMENT_JWT_SECRET=... locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 30s \\
        --host http://127.0.0.1:8080

ViewerUser  posts single views (some with a watch_seconds body) to content ids drawn from a Zipf-like
            distribution over LOADTEST_CONTENT_POOL ids (default 10,000: a few hot items, a long tail),
            and now and then reads an item's stats.
IngestUser  posts msgpack batches of LOADTEST_BATCH_SIZE events (default 1,000) to /api/v1/views/batch
            with an ingest token minted from ENGAGEMENT_JWT_SECRET (HS256). Without the secret it is
            left out (a warning), so the viewer scenario still runs.

Pick one with ``locust ... ViewerUser`` or ``IngestUser``; by default viewers are 10x as many.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import random
import sys
from pathlib import Path

import msgpack
from locust import HttpUser, between, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # locust puts only loadtest/ on the path
from loadtest.bodies import ingest_token, make_events  # noqa: E402

POOL = int(os.environ.get("LOADTEST_CONTENT_POOL", "10000"))
BATCH_SIZE = int(os.environ.get("LOADTEST_BATCH_SIZE", "1000"))
ZIPF_S = float(os.environ.get("LOADTEST_ZIPF_S", "1.1"))
PREFIX = os.environ.get("LOADTEST_PREFIX", "locust-")


def _zipf_cdf(n: int, s: float) -> list[float]:
    weights = [1.0 / (rank**s) for rank in range(1, n + 1)]
    return list(itertools.accumulate(weights))


_CDF = _zipf_cdf(POOL, ZIPF_S)


def zipf_content_id() -> str:
    """A content id; <prefix>0 is the most viewed (about 15% of views with s=1.1 over 10,000 ids)."""
    rank = bisect.bisect_left(_CDF, random.random() * _CDF[-1])
    return f"{PREFIX}{rank}"


class ViewerUser(HttpUser):
    weight = 10
    wait_time = between(0.01, 0.1)

    @task(20)
    def view(self) -> None:
        cid = zipf_content_id()
        with self.client.post(
            f"/api/v1/content/{cid}/views", name="/api/v1/content/[id]/views", catch_response=True
        ) as resp:
            if resp.status_code != 202:
                resp.failure(f"status {resp.status_code}")

    @task(5)
    def view_with_watch_time(self) -> None:
        cid = zipf_content_id()
        with self.client.post(
            f"/api/v1/content/{cid}/views",
            json={"watch_seconds": random.randint(1, 900)},
            name="/api/v1/content/[id]/views (watch_seconds)",
            catch_response=True,
        ) as resp:
            if resp.status_code != 202:
                resp.failure(f"status {resp.status_code}")

    @task(1)
    def stats(self) -> None:
        cid = zipf_content_id()
        with self.client.get(
            f"/api/v1/content/{cid}/stats", name="/api/v1/content/[id]/stats", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
            elif "views" not in resp.json():
                resp.failure("no views in the stats")


class IngestUser(HttpUser):
    weight = 1
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {ingest_token()}", "Content-Type": "application/msgpack"}
        # A few bodies made once, so the client's CPU goes to sending rather than to msgpack.
        self.bodies = [msgpack.packb(make_events(BATCH_SIZE, PREFIX, POOL)) for _ in range(8)]

    @task
    def batch(self) -> None:
        with self.client.post(
            "/api/v1/views/batch",
            data=random.choice(self.bodies),
            headers=self.headers,
            name="/api/v1/views/batch",
            catch_response=True,
        ) as resp:
            if resp.status_code != 202:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
            elif resp.json().get("accepted") != BATCH_SIZE:
                resp.failure(f"accepted {resp.json().get('accepted')} of {BATCH_SIZE}")


if not os.environ.get("ENGAGEMENT_JWT_SECRET"):
    # No secret, no token: drop the ingest scenario rather than fail every request with 401.
    IngestUser.weight = 0
    IngestUser.abstract = True

    @events.init.add_listener
    def _warn(environment, **kwargs) -> None:  # type: ignore[no-untyped-def]
        logging.warning("ENGAGEMENT_JWT_SECRET is not set: IngestUser is disabled")
