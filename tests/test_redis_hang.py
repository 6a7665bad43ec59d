"""A Redis that hangs instead of refusing (SIGSTOP): every request path bounds its wait on Redis by
ENGAGEMENT_REDIS_TIMEOUT_S, then falls back (Postgres) or answers 503; while it hangs, requests do not
wait at all; once it answers again, requests use it again (daemon/breaker.py, issue 18)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
from live_helpers import metric
from service_fixtures import ApiProcess, token, wait_until

from daemon.breaker import Breaker, RedisUnavailableError
from daemon.pipeliner import Pipeliner
from daemon.redis_client import make_redis
from daemon.settings import Settings

TIMEOUT_S = 1.0
BOUND_S = 2 * TIMEOUT_S  # one timeout, the fallback, and the machine's noise; two timeouts would not fit


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


@contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _all_at_once(api: ApiProcess, wave: str) -> dict[str, tuple[int, float]]:
    """Every request of REQUESTS sent at the same moment (a user each): status and seconds taken."""
    results: dict[str, tuple[int, float]] = {}
    start = threading.Barrier(len(REQUESTS))

    def call(i: int, method: str, path: str, body: object) -> None:
        with httpx.Client(base_url=api.base_url, timeout=30) as client:
            start.wait()
            started = time.monotonic()
            r = client.request(method, path, json=body, headers=_auth(f"{wave}-{i}"))
        results[f"{method} {path}"] = (r.status_code, round(time.monotonic() - started, 2))

    threads = [threading.Thread(target=call, args=(i, *req)) for i, req in enumerate(REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(REQUESTS), results
    return results


@pytest.mark.slow
def test_every_request_bounds_its_wait_on_a_hung_redis(start_api, migrated: Settings, redis_server) -> None:
    api = start_api(migrated.replace(redis_timeout_s=TIMEOUT_S, rate_limits=""))
    warm = _all_at_once(api, "warm")  # connections made, scripts loaded
    assert all(status < 500 for status, _ in warm.values()), warm
    assert metric(api.base_url, "engagement_redis_breaker_open") == 0

    with _stopped(redis_server.proc.pid):
        # Given Redis stops answering, requests in flight wait one timeout, then fall back or answer 503
        first = _all_at_once(api, "first")
        assert {k: v for k, v in first.items() if v[1] >= BOUND_S} == {}, first
        assert {k: v for k, v in first.items() if v[0] >= 500 and v[0] != 503} == {}, first
        # and the breaker is open: the next requests do not wait for Redis at all
        assert metric(api.base_url, "engagement_redis_breaker_open") == 1
        second = _all_at_once(api, "second")
        assert {k: v for k, v in second.items() if v[1] >= TIMEOUT_S / 2} == {}, second
        assert {k: v for k, v in second.items() if v[0] >= 500 and v[0] != 503} == {}, second
        # (a like in Postgres alone, as when Redis refuses connections)
        assert second["POST /api/v1/content/hang-1/like"][0] == 200

    # When Redis answers again, a probe closes the breaker, and requests use Redis again
    wait_until(lambda: metric(api.base_url, "engagement_redis_breaker_open") == 0, what="the breaker closed")
    assert metric(api.base_url, "engagement_redis_breaker_trips_total") == 1
    r = api.client.post("/api/v1/content/hang-2/like", headers=_auth("after"))
    assert (r.status_code, r.json()["state"]) == (200, "liked")
    with redis.Redis.from_url(redis_server.url) as client:
        assert any(k.endswith(b"hang-2|after") for k in client.scan_iter("eng:*:lk:*"))


# -- the breaker and the pipeliner's own connection, without an api ---------------------------------


def test_breaker_opens_on_a_timeout_probes_after_the_cooldown_and_closes_on_an_answer() -> None:
    changes: list[bool] = []
    breaker = Breaker(cooldown_s=0.2, timeout_s=0.3, on_change=changes.append)
    breaker.admit()  # closed: every call goes
    breaker.failed()  # a refused connection is not a hang
    assert not breaker.open
    breaker.timed_out()
    assert (breaker.open, breaker.trips, changes) == (True, 1, [True])
    with pytest.raises(RedisUnavailableError):
        breaker.admit()
    wait_until(lambda: time.monotonic() >= breaker.retry_at, what="the cooldown")
    breaker.admit()  # the probe
    with pytest.raises(RedisUnavailableError):
        breaker.admit()  # while the probe is out, the others fail
    breaker.timed_out()  # the probe timed out: open for another cooldown, not another trip
    assert (breaker.open, breaker.trips, changes) == (True, 1, [True])
    wait_until(lambda: time.monotonic() >= breaker.retry_at, what="the cooldown")
    breaker.admit()
    breaker.failed()  # a probe refused: the next call probes
    breaker.admit()
    # a probe that never reports (its caller gone) is replaced after the cooldown and a timeout
    assert breaker.retry_at - time.monotonic() > 0.4
    with pytest.raises(RedisUnavailableError):
        breaker.admit()
    wait_until(lambda: time.monotonic() >= breaker.retry_at, what="the probe's time")
    breaker.admit()
    breaker.answered()
    assert (breaker.open, changes) == (False, [True, False])
    breaker.admit()


def test_a_call_on_a_busy_pipeliner_connection_waits_one_timeout_not_two(redis_server, migrated) -> None:
    """The pipeliner's connection fails its calls after one timeout without a reply, also when replies
    came in the timeout before Redis stopped (the watch is re-armed from the last reply)."""
    settings = migrated.replace(redis_timeout_s=TIMEOUT_S)

    async def scenario() -> tuple[float, float]:
        breaker = Breaker(cooldown_s=60, timeout_s=TIMEOUT_S)
        client = make_redis(settings, breaker)
        pipeliner = Pipeliner(client, timeout=TIMEOUT_S)
        try:
            # replies come for part of a timeout (the watch armed at the first call sees them), then
            # Redis stops: a watch that only compared reply counts per period would wait 1.6 timeouts
            until = time.monotonic() + 0.4 * TIMEOUT_S
            while time.monotonic() < until:
                assert await pipeliner.execute_command("PING") == "PONG"
                await asyncio.sleep(0.01)
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(redis.TimeoutError):
                    await pipeliner.execute_command("PING")
                waited = time.monotonic() - started
                # the breaker is open: the next call fails at once, on the pipeliner and the client
                started = time.monotonic()
                with pytest.raises(RedisUnavailableError):
                    await pipeliner.execute_command("PING")
                with pytest.raises(RedisUnavailableError):
                    await client.get("x")
                at_once = time.monotonic() - started
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            return waited, at_once
        finally:
            await pipeliner.aclose()
            await client.aclose()

    waited, at_once = asyncio.run(scenario())
    assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S * 1.5, waited
    assert at_once < 0.1, at_once


def test_a_timed_out_call_on_the_pool_is_not_sent_again(redis_server, migrated) -> None:
    """redis-py retries connection errors once (a restarted Redis), never a timeout: a hung Redis costs
    a call one timeout, and a script that ran but answered late is not run twice."""
    settings = migrated.replace(redis_timeout_s=TIMEOUT_S)

    async def scenario() -> float:
        client = make_redis(settings)  # the flusher's and consumer's: no breaker
        try:
            await client.ping()
            with _stopped(redis_server.proc.pid):
                started = time.monotonic()
                with pytest.raises(redis.TimeoutError):
                    await client.incr("hang:sent")
                return time.monotonic() - started
        finally:
            await client.aclose()

    waited = asyncio.run(scenario())
    assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S * 1.5, waited
    with redis.Redis.from_url(redis_server.url) as client:
        wait_until(lambda: client.get("hang:sent") is not None, what="the INCR to run")
        assert client.get("hang:sent") == b"1"  # sent once: Redis ran it once it resumed


def test_an_error_reply_is_an_answer_and_closes_the_breaker(redis_server, migrated) -> None:
    """A probe Redis answers with an error (NOSCRIPT, OOM, a script error) closes the breaker: Redis
    answers, and the caller gets that error, not the breaker's."""
    settings = migrated.replace(redis_timeout_s=TIMEOUT_S)

    async def scenario() -> None:
        breaker = Breaker(cooldown_s=0.05, timeout_s=TIMEOUT_S)
        client = make_redis(settings, breaker)
        try:
            breaker.timed_out()
            wait_until(lambda: time.monotonic() >= breaker.retry_at, what="the cooldown")
            with pytest.raises(redis.exceptions.NoScriptError):
                await client.evalsha("0" * 40, 0)
            assert not breaker.open
            assert await client.ping()
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_hung_cluster_node_costs_a_call_one_timeout(redis_cluster, migrated) -> None:
    """redis-py's cluster client retries timeouts, refreshing its topology from the hung node too (15 s
    for a 1 s timeout); the api's cluster client does not retry, and its breaker opens."""
    settings = migrated.replace(redis_url=redis_cluster.url, redis_cluster=True, redis_timeout_s=TIMEOUT_S)

    async def scenario() -> None:
        breaker = Breaker(cooldown_s=60, timeout_s=TIMEOUT_S)
        client = make_redis(settings, breaker)
        try:
            await client.set("hang-key", "v")
            node = client.get_node_from_key("hang-key")
            (server,) = [n for n in redis_cluster.nodes if n.port == node.port]
            with _stopped(server.proc.pid):
                started = time.monotonic()
                with pytest.raises(redis.TimeoutError):
                    await client.get("hang-key")
                waited = time.monotonic() - started
                assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S * 1.5, waited
                assert breaker.open
                pipe = client.pipeline(transaction=False)
                pipe.get("hang-key")
                with pytest.raises(RedisUnavailableError):
                    await pipe.execute()
        finally:
            await client.aclose()

    asyncio.run(scenario())
