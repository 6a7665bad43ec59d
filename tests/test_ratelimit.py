"""Per-user sliding-window rate limits: rate_limit.lua on a real Redis, and the limits setting parser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from store_helpers import limiter_on

from api.errors import api_error
from daemon.proc.servers import RedisClusterServers
from daemon.ratelimit import Limit, RateLimiter, parse_limits, rate_limit_key, refusal


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    # As api.services.make_redis builds it, with a pool large enough for 300 commands in flight at once
    # (redis-py's asyncio pool refuses the 101st concurrent command by default).
    async with aioredis.Redis.from_url(redis_url, decode_responses=True, max_connections=400) as client:
        yield client


@pytest.fixture
def limiter(redis_client: aioredis.Redis) -> RateLimiter:
    return limiter_on(redis_client)


async def test_exactly_the_limit_of_concurrent_requests_is_admitted(limiter: RateLimiter) -> None:
    # Given a limit of 100 likes a minute
    like = Limit("like", 100, 60_000)

    # When one user sends 300 likes at once
    decisions = await asyncio.gather(*(limiter.check("user-1", like) for _ in range(300)))

    # Then exactly 100 are admitted, each seeing a distinct number of remaining admissions
    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 100
    assert sorted(d.remaining for d in admitted) == list(range(100))
    refused = [d for d in decisions if not d.allowed]
    assert len(refused) == 200
    assert all(d.remaining == 0 and d.retry_after_s >= 1 for d in refused)
    assert all(d.retry_after_ms == 0 and d.retry_after_s == 0 for d in admitted)


async def test_a_refused_request_is_told_to_retry_within_the_window(
    limiter: RateLimiter, redis_client: aioredis.Redis
) -> None:
    # Given a user who used up 2 shares a minute
    share = Limit("share", 2, 60_000)
    assert [(await limiter.check("user-1", share)).allowed for _ in range(2)] == [True, True]

    # When a third share arrives
    decision = await limiter.check("user-1", share)

    # Then it is refused with a retry time within (0, window]: the window less the time since the first
    # share (not known here to the millisecond; a test takes far less than 10 s)
    assert not decision.allowed
    assert 50_000 < decision.retry_after_ms <= 60_000
    assert 1 <= decision.retry_after_s <= 60
    assert decision.retry_after_s == -(-decision.retry_after_ms // 1000)

    # And refused requests do not enter the window: retrying does not push the retry time back
    again = await limiter.check("user-1", share)
    assert not again.allowed and again.retry_after_ms <= decision.retry_after_ms
    assert await redis_client.zcard(rate_limit_key("user-1", "share")) == 2

    # And the API answers 429 rate_limited with Retry-After in whole seconds
    error = api_error(refusal(decision))
    response = error.response()
    assert response.status_code == 429
    assert response.headers["Retry-After"] == str(decision.retry_after_s)
    body = orjson.loads(response.body)
    assert body["error"] == "rate_limited"
    assert body["retry_after_s"] == decision.retry_after_s
    assert "at most 2 per 60 s" in body["message"]


async def test_requests_are_admitted_again_once_the_window_has_passed(limiter: RateLimiter) -> None:
    # Given a user who used up 3 likes in a 2 s window (wide enough that a loaded machine cannot let it
    # pass before the fourth like, short enough to wait for)
    window_ms = 2_000
    like = Limit("like", 3, window_ms)
    started = time.monotonic()
    for _ in range(3):
        assert (await limiter.check("user-1", like)).allowed

    # When the next like is refused
    asked = time.monotonic()
    refused = await limiter.check("user-1", like)
    assert not refused.allowed
    # its retry time: the window less the time since the first like was sent (and no less), within 5 ms
    since_first_ms = (time.monotonic() - started) * 1000
    assert window_ms - since_first_ms - 5 <= refused.retry_after_ms <= window_ms

    # Then retrying until admitted succeeds, and not before the retry time it was given
    deadline = asked + 20.0
    while not (await limiter.check("user-1", like)).allowed:
        assert time.monotonic() < deadline, "never admitted again after the window"
        await asyncio.sleep(0.01)
    waited_ms = (time.monotonic() - asked) * 1000
    assert waited_ms >= refused.retry_after_ms - 20  # tolerance: server and client clocks


async def test_users_and_actions_are_limited_separately(limiter: RateLimiter) -> None:
    # Given user-1 has used up 2 likes a minute
    like, dislike = Limit("like", 2, 60_000), Limit("dislike", 2, 60_000)
    for _ in range(2):
        assert (await limiter.check("user-1", like)).allowed
    assert not (await limiter.check("user-1", like)).allowed

    # Then user-1 may still dislike, and user-2 may still like, each with their own full allowance
    first_dislike = await limiter.check("user-1", dislike)
    assert (first_dislike.allowed, first_dislike.remaining) == (True, 1)
    other_user = await limiter.check("user-2", like)
    assert (other_user.allowed, other_user.remaining) == (True, 1)

    # And user-1's likes stay refused
    assert not (await limiter.check("user-1", like)).allowed


async def test_the_window_key_expires_with_the_window(
    limiter: RateLimiter, redis_client: aioredis.Redis
) -> None:
    # When a user comments under a 20-a-minute limit
    comment = Limit("comment", 20, 60_000)
    assert (await limiter.check("user-7", comment)).allowed

    # Then the key carries the user hash tag and expires within the window
    key = rate_limit_key("user-7", "comment")
    assert key == "eng:{u:user-7}:rl:comment"
    assert await redis_client.zcard(key) == 1
    assert 0 < await redis_client.pttl(key) <= 60_000


async def test_the_limiter_works_after_function_flush(
    limiter: RateLimiter, redis_client: aioredis.Redis
) -> None:
    # Given a limiter that has loaded its script (the project's function library)
    like = Limit("like", 2, 60_000)
    assert (await limiter.check("user-1", like)).allowed
    library = limiter.store.scripts.rate_limit.library
    assert library is not None
    assert await _libraries(redis_client) == [library.name]

    # When Redis forgets its functions (FUNCTION FLUSH, a restart without persistence)
    await redis_client.execute_command("FUNCTION", "FLUSH")
    assert await _libraries(redis_client) == []

    # Then the next checks reload the library and still count the window exactly
    second = await limiter.check("user-1", like)
    assert (second.allowed, second.remaining) == (True, 0)
    assert not (await limiter.check("user-1", like)).allowed
    assert await _libraries(redis_client) == [library.name]


async def _libraries(client: aioredis.Redis) -> list[str]:
    return [entry["library_name"] for entry in await client.execute_command("FUNCTION", "LIST")]


async def test_a_retried_request_is_answered_again_without_taking_a_second_place(
    limiter: RateLimiter, redis_client: aioredis.Redis
) -> None:
    # Given a limit of 2, and requests whose replies may be lost and resent with the same request id
    key = rate_limit_key("user-1", "like")

    async def call(request_id: str) -> list[int]:
        return await limiter.store.rate_limit("user-1", "like", 60_000, 2, request_id)

    # When each request is sent twice
    answers = [await call(request_id) for request_id in ("a", "a", "b", "b", "c", "c")]

    # Then a retry answers as the first run did, and only the third request is refused
    assert [answer[:2] for answer in answers] == [[1, 1], [1, 1], [1, 0], [1, 0], [0, 0], [0, 0]]
    assert await redis_client.zrange(key, 0, -1) == ["a", "b"]

    # And a request retried with its Idempotency-Key as request id is admitted again, once counted
    share = Limit("share", 1, 60_000)
    first = await limiter.check("user-1", share, request_id="key-1")
    retried = await limiter.check("user-1", share, request_id="key-1")
    assert (first.allowed, retried.allowed) == (True, True)
    assert not (await limiter.check("user-1", share, request_id="key-2")).allowed


def test_the_limits_setting_parses_one_limit_per_action() -> None:
    text = "like=100/60s,dislike=100/60s,subscribe=30/60s,share=60/60s,comment=20/60s"
    assert parse_limits(text) == {
        "like": Limit("like", 100, 60_000),
        "dislike": Limit("dislike", 100, 60_000),
        "subscribe": Limit("subscribe", 30, 60_000),
        "share": Limit("share", 60, 60_000),
        "comment": Limit("comment", 20, 60_000),
    }
    assert parse_limits(" like = 5 / 1m , view=10/s, burst=3/500ms,daily=1000/24h") == {
        "like": Limit("like", 5, 60_000),
        "view": Limit("view", 10, 1_000),
        "burst": Limit("burst", 3, 500),
        "daily": Limit("daily", 1000, 86_400_000),
    }
    assert parse_limits("") == {}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("like", "'like'"),
        ("like=100", "'like=100'"),
        ("like=100/60", "'like=100/60'"),
        ("like=100/60x", "'like=100/60x'"),
        ("like=-1/60s", "'like=-1/60s'"),
        ("like=0/60s", "'like=0/60s'"),
        ("like=10/0s", "'like=10/0s'"),
        ("like=1.5/60s", "'like=1.5/60s'"),
        ("Like=1/60s", "'Like=1/60s'"),
        ("=1/60s", "'=1/60s'"),
        ("like=1/60s,like=2/60s", "'like=2/60s'"),
        ("like=1/60s,,share=1/60s", "empty part"),
        ("like=1/60s,", "empty part"),
        ("like=1/60s;share=1/60s", "'like=1/60s;share=1/60s'"),
    ],
)
def test_the_limits_setting_rejects_bad_parts_by_name(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        parse_limits(text)


@pytest.mark.slow
async def test_the_limiter_runs_unchanged_on_a_redis_cluster(redis_cluster: RedisClusterServers) -> None:
    # Given a limiter on a three-master Redis Cluster
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True, max_connections=400)
    try:
        # Connect before the storm: redis-py's async cluster client, first used by 200 concurrent
        # commands, races its own connection setup ('NoneType' object has no attribute 'writelines').
        await client.initialize()
        limiter = limiter_on(client)
        like = Limit("like", 5, 60_000)

        # When 30 users each send 10 likes at once, and the scripts are flushed midway
        users = [f"user-{i}" for i in range(30)]
        first = await asyncio.gather(*(limiter.check(u, like) for u in users for _ in range(7)))
        for node in redis_cluster.nodes:
            async with aioredis.Redis.from_url(node.url) as node_client:
                await node_client.script_flush()
        second = await asyncio.gather(*(limiter.check(u, like) for u in users for _ in range(3)))

        # Then each user is admitted exactly 5 times, wherever their key lives
        admitted = [u for u, d in zip([u for u in users for _ in range(7)], first, strict=True) if d.allowed]
        assert sorted(admitted) == sorted(u for u in users for _ in range(5))
        assert sum(d.allowed for d in second) == 0
    finally:
        await client.aclose()
    sizes = []
    for node in redis_cluster.nodes:
        async with aioredis.Redis.from_url(node.url) as node_client:
            sizes.append(await node_client.dbsize())
    assert sum(sizes) == 30 and all(sizes), sizes  # one key per user, spread over all three masters
