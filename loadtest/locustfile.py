"""Locust scenarios, the way load testers use them (the benchmark's figures come from bench.py).

    make loadtest SCENARIO=likes USERS=50 DURATION=30s        # against make run's service
    locust -f loadtest/locustfile.py --headless --tags viral -u 50 -r 10 -t 30s --host http://127.0.0.1:8080

Each scenario is a User class whose tasks carry its tag (``--tags <tag>`` runs it alone; no tag: all,
weighted). Tokens are minted from ENGAGEMENT_JWT_SECRET (``make loadtest`` reads ``.data/jwt_secret``);
without it only the anonymous scenarios run (a warning says so). A request fails when its answer is not
the one the scenario expects; a 429 counts as expected only in the like storm, which exists to hit the
rate limits.

tag      class              what
viral    ViralUser          many viewers on one item (LOADTEST_VIRAL_ID, default viral-0): single views,
                            now and then its stats
views    ViewerUser         single views (some with watch_seconds) over a Zipf-like pool of
                            LOADTEST_CONTENT_POOL ids (default 10,000), now and then stats
likes    LikeStormUser      many users liking, disliking, switching and unliking the same
                            LOADTEST_STORM_ITEMS items (default 10); 429 rate_limited is expected
bulk     IngestUser         msgpack batches of LOADTEST_BATCH_SIZE events (default 1,000)
browse   BrowsingUser       a signed-in user's reads and writes: stats, batch stats, comments, watch
                            history, playlists, subscriptions, trending
live     LiveWatcherUser    live-count watchers: a WebSocket on an item's /live, held for a few seconds,
                            each count message a request in the report
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import msgpack
from locust import HttpUser, User, between, events, tag, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # locust puts only loadtest/ on the path
from loadtest.bodies import ingest_token, make_events  # noqa: E402

POOL = int(os.environ.get("LOADTEST_CONTENT_POOL", "10000"))
BATCH_SIZE = int(os.environ.get("LOADTEST_BATCH_SIZE", "1000"))
ZIPF_S = float(os.environ.get("LOADTEST_ZIPF_S", "1.1"))
PREFIX = os.environ.get("LOADTEST_PREFIX", "locust-")
VIRAL_ID = os.environ.get("LOADTEST_VIRAL_ID", "viral-0")
STORM_ITEMS = int(os.environ.get("LOADTEST_STORM_ITEMS", "10"))
SECRET = os.environ.get("ENGAGEMENT_JWT_SECRET", "")


def _zipf_cdf(n: int, s: float) -> list[float]:
    weights = [1.0 / (rank**s) for rank in range(1, n + 1)]
    return list(itertools.accumulate(weights))


_CDF = _zipf_cdf(POOL, ZIPF_S)


def zipf_content_id() -> str:
    """A content id; <prefix>0 is the most viewed (about 15% of views with s=1.1 over 10,000 ids)."""
    rank = bisect.bisect_left(_CDF, random.random() * _CDF[-1])
    return f"{PREFIX}{rank}"


def user_token(sub: str) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")


def expect(resp, *statuses: int) -> None:  # type: ignore[no-untyped-def]
    """Fail a catch_response request whose status is not one of ``statuses``; pass one that is (locust
    would otherwise count an expected 4xx, a 409 or 429 the scenario allows, as a failure)."""
    if resp.status_code not in statuses:
        resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
    else:
        resp.success()


class ViralUser(HttpUser):
    weight = 4
    wait_time = between(0.005, 0.05)

    @tag("viral")
    @task(20)
    def view(self) -> None:
        with self.client.post(
            f"/api/v1/content/{VIRAL_ID}/views", name="viral views", catch_response=True
        ) as r:
            expect(r, 202)

    @tag("viral")
    @task(1)
    def stats(self) -> None:
        with self.client.get(
            f"/api/v1/content/{VIRAL_ID}/stats", name="viral stats", catch_response=True
        ) as r:
            expect(r, 200)


class ViewerUser(HttpUser):
    weight = 10
    wait_time = between(0.01, 0.1)

    @tag("views")
    @task(20)
    def view(self) -> None:
        cid = zipf_content_id()
        with self.client.post(
            f"/api/v1/content/{cid}/views", name="/api/v1/content/[id]/views", catch_response=True
        ) as resp:
            expect(resp, 202)

    @tag("views")
    @task(5)
    def view_with_watch_time(self) -> None:
        cid = zipf_content_id()
        with self.client.post(
            f"/api/v1/content/{cid}/views",
            json={"watch_seconds": random.randint(1, 900)},
            name="/api/v1/content/[id]/views (watch_seconds)",
            catch_response=True,
        ) as resp:
            expect(resp, 202)

    @tag("views")
    @task(1)
    def stats(self) -> None:
        cid = zipf_content_id()
        with self.client.get(
            f"/api/v1/content/{cid}/stats", name="/api/v1/content/[id]/stats", catch_response=True
        ) as resp:
            expect(resp, 200)
            if resp.status_code == 200 and "views" not in resp.json():
                resp.failure("no views in the stats")


class _SignedIn(HttpUser):
    abstract = True

    def on_start(self) -> None:
        self.sub = f"locust-{random.getrandbits(40):010x}"
        self.auth = {"Authorization": f"Bearer {user_token(self.sub)}"}


class LikeStormUser(_SignedIn):
    weight = 3
    wait_time = between(0.01, 0.1)

    def _react(self, method: str, kind: str) -> None:
        item = f"storm-{random.randrange(STORM_ITEMS)}"
        with self.client.request(
            method, f"/api/v1/content/{item}/{kind}", headers=self.auth, name=f"{method} [id]/{kind}",
            catch_response=True,
        ) as resp:  # fmt: skip
            if resp.status_code == 429 and resp.json().get("error") == "rate_limited":
                resp.success()  # the storm is there to hit the limits
            else:
                expect(resp, 200)
                if resp.status_code == 200 and min(resp.json()["likes"], resp.json()["dislikes"]) < 0:
                    resp.failure(f"a negative count: {resp.text}")

    @tag("likes")
    @task(6)
    def like(self) -> None:
        self._react("POST", "like")

    @tag("likes")
    @task(2)
    def switch_to_dislike(self) -> None:
        self._react("POST", "dislike")

    @tag("likes")
    @task(3)
    def unlike(self) -> None:
        self._react("DELETE", "like")

    @tag("likes")
    @task(1)
    def undislike(self) -> None:
        self._react("DELETE", "dislike")


class IngestUser(HttpUser):
    weight = 1
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {ingest_token()}", "Content-Type": "application/msgpack"}
        # A few bodies made once, so the client's CPU goes to sending rather than to msgpack.
        self.bodies = [msgpack.packb(make_events(BATCH_SIZE, PREFIX, POOL)) for _ in range(8)]

    @tag("bulk")
    @task
    def batch(self) -> None:
        with self.client.post(
            "/api/v1/views/batch",
            data=random.choice(self.bodies),
            headers=self.headers,
            name="/api/v1/views/batch",
            catch_response=True,
        ) as resp:
            expect(resp, 202)
            if resp.status_code == 202 and resp.json().get("accepted") != BATCH_SIZE:
                resp.failure(f"accepted {resp.json().get('accepted')} of {BATCH_SIZE}")


class BrowsingUser(_SignedIn):
    weight = 3
    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        super().on_start()
        self.playlist: int | None = None

    def _call(self, method: str, path: str, name: str, *statuses: int, **kwargs: object):  # type: ignore[no-untyped-def]
        with self.client.request(
            method, path, headers=self.auth, name=name, catch_response=True, **kwargs
        ) as r:
            expect(r, *statuses)
            return r

    @tag("browse")
    @task(6)
    def stats(self) -> None:
        self._call("GET", f"/api/v1/content/{zipf_content_id()}/stats", "browse stats", 200)

    @tag("browse")
    @task(3)
    def batch_stats(self) -> None:
        ids = [zipf_content_id() for _ in range(30)]
        self._call("POST", "/api/v1/stats/batch", "browse batch stats", 200, json={"content_ids": ids})

    @tag("browse")
    @task(2)
    def comments(self) -> None:
        item = zipf_content_id()
        self._call("GET", f"/api/v1/content/{item}/comments", "browse comments", 200)
        if random.random() < 0.3:
            body = {"body": "nice one"}
            self._call("POST", f"/api/v1/content/{item}/comments", "browse comment", 201, 429, json=body)

    @tag("browse")
    @task(3)
    def history(self) -> None:
        item = zipf_content_id()
        heartbeat = {"progress_pct": random.randint(0, 100), "position_seconds": random.randint(0, 3600)}
        self._call("PUT", f"/api/v1/users/me/history/{item}", "browse heartbeat", 200, json=heartbeat)
        self._call("GET", "/api/v1/users/me/history", "browse history", 200)

    @tag("browse")
    @task(1)
    def playlists(self) -> None:
        if self.playlist is None:
            r = self._call(
                "POST", "/api/v1/users/me/playlists", "browse new playlist", 201, json={"name": "mine"}
            )
            if r.status_code == 201:
                self.playlist = r.json()["playlist_id"]
            return
        item = {"content_id": zipf_content_id()}
        items = f"/api/v1/users/me/playlists/{self.playlist}/items"
        self._call("POST", items, "browse add to playlist", 201, 409, json=item)  # 409: already in it
        self._call("GET", "/api/v1/users/me/playlists", "browse playlists", 200)

    @tag("browse")
    @task(1)
    def subscriptions(self) -> None:
        creator = f"creator-{random.randrange(50)}"
        self._call("POST", f"/api/v1/creators/{creator}/subscribe", "browse subscribe", 200, 429)
        self._call("GET", "/api/v1/users/me/subscriptions", "browse my subscriptions", 200)

    @tag("browse")
    @task(1)
    def trending(self) -> None:
        self._call("GET", "/api/v1/trending?window=1h", "browse trending", 200)


class LiveWatcherUser(User):
    """Opens /live on an item as a WebSocket and holds it for 2 to 6 s; each count message is reported
    as a request named ``live message`` (its time: since the connection opened, for the first)."""

    weight = 2
    wait_time = between(0.1, 0.5)

    @tag("live")
    @task
    def watch(self) -> None:
        import websocket  # websocket-client, which locust installs

        host = self.host or "http://127.0.0.1:8080"
        url = host.replace("http://", "ws://", 1) + f"/api/v1/content/{zipf_content_id()}/live"
        fire = self.environment.events.request.fire
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(url, timeout=10)
        except Exception as exc:  # noqa: BLE001 - every failure is the report's
            fire(request_type="WS", name="live connect", response_time=0, response_length=0, exception=exc)
            return
        fire(request_type="WS", name="live connect", response_time=(time.perf_counter() - started) * 1000,
             response_length=0, exception=None)  # fmt: skip
        until = time.monotonic() + random.uniform(2, 6)
        last = started
        try:
            while time.monotonic() < until:
                ws.settimeout(max(until - time.monotonic(), 0.05))
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    break
                now = time.perf_counter()
                message = json.loads(raw)
                error = None if "ts" in message else ValueError(f"not a count message: {raw[:100]}")
                fire(request_type="WS", name="live message", response_time=(now - last) * 1000,
                     response_length=len(raw), exception=error)  # fmt: skip
                last = now
        except Exception as exc:  # noqa: BLE001
            fire(request_type="WS", name="live message", response_time=0, response_length=0, exception=exc)
        finally:
            hang_up(ws)


def hang_up(ws) -> None:  # type: ignore[no-untyped-def]
    """Sends the close frame and drops the connection without waiting for the server's.

    websocket-client's ``close()`` waits up to 3 s for that answer inside a bare ``except: pass``, which
    also swallows the GreenletExit locust stops a user with: a user stopped at that moment ran on, and
    locust waited for it forever (a headless run that never ended)."""
    import websocket

    try:
        ws.send_close()
    except (websocket.WebSocketException, OSError):
        pass  # the connection is gone already
    ws.shutdown()


if not SECRET:
    # No secret, no token: drop the scenarios that need one rather than fail every request with 401.
    for _user in (IngestUser, LikeStormUser, BrowsingUser):
        _user.weight = 0
        _user.abstract = True

    @events.init.add_listener
    def _warn(environment, **kwargs) -> None:  # type: ignore[no-untyped-def]
        logging.warning("ENGAGEMENT_JWT_SECRET is not set: the bulk, likes and browse scenarios are disabled")


@events.init.add_listener
def _only_the_scenarios_asked_for(environment, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """With --tags, the users whose tasks were all filtered out are not spawned (locust would spawn them,
    and each would fail on its first task). Locust filters the tasks when the run starts; done here
    first (it filters only once)."""
    environment._filter_tasks_by_tags()
    kept = [user for user in environment.user_classes if user.tasks]
    if kept and len(kept) != len(environment.user_classes):
        environment.user_classes = kept
