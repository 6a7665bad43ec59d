"""Auto-pipelining (daemon/pipeliner.py) on a real Redis: concurrent calls share round trips, each caller
gets its own reply or error, a failed connection fails exactly the calls waiting on it, the queue is
bounded, and on Redis Cluster every call is routed by slot."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from store_helpers import limiter_on

from daemon.pipeliner import PipelineFullError, Pipeliner
from daemon.proc.servers import RedisClusterServers
from daemon.ratelimit import Limit


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with aioredis.Redis.from_url(redis_url, decode_responses=True, max_connections=64) as client:
        await client.flushdb()
        yield client


@pytest.fixture
async def pipeliners() -> AsyncIterator[list[Pipeliner]]:
    """Pipeliners made by a test, closed after it (a plain client's pipeliner has its own connection)."""
    made: list[Pipeliner] = []
    yield made
    for pipeliner in made:
        await pipeliner.aclose()


def _made(pipeliners: list[Pipeliner], pipeliner: Pipeliner) -> Pipeliner:
    pipeliners.append(pipeliner)
    return pipeliner


async def test_concurrent_calls_share_one_round_trip_and_each_gets_its_own_reply(
    redis_client: aioredis.Redis, pipeliners: list[Pipeliner]
) -> None:
    pipeliner = _made(pipeliners, Pipeliner(redis_client, max_batch=512))

    # When 300 callers each increment their own counter in the same tick
    replies = await asyncio.gather(*(pipeliner.execute_command("INCRBY", f"n-{i}", i) for i in range(300)))

    # Then every caller got its own reply, and they all travelled in one write
    assert replies == list(range(300))
    assert (pipeliner.pipelines, pipeliner.commands) == (1, 300)
    assert await redis_client.get("n-299") == "299"
    assert pipeliner.pending == 0


async def test_batches_are_capped(redis_client: aioredis.Redis, pipeliners: list[Pipeliner]) -> None:
    pipeliner = _made(pipeliners, Pipeliner(redis_client, max_batch=4, max_pending=16))
    await pipeliner.execute_command("PING")  # connected
    replies = await asyncio.gather(*(pipeliner.execute_command("INCR", "shared") for _ in range(10)))
    assert sorted(replies) == list(range(1, 11))
    assert pipeliner.pipelines == 1 + 3  # the PING, then 4 + 4 + 2


async def test_while_a_write_is_in_flight_the_queue_waits_until_it_holds_early_batch_commands(
    redis_client: aioredis.Redis, pipeliners: list[Pipeliner]
) -> None:
    pipeliner = _made(pipeliners, Pipeliner(redis_client, early_batch=3))
    await pipeliner.execute_command("PING")  # connected
    # Given a write in flight that Redis answers only once "go" gets an element
    blocked = asyncio.ensure_future(pipeliner.execute_command("BLPOP", "go", 10))
    await _ticks()
    assert pipeliner.pipelines == 2

    # When two commands are queued, they wait for the write's replies
    first = [asyncio.ensure_future(pipeliner.execute_command("INCR", "n")) for _ in range(2)]
    await _ticks()
    assert pipeliner.pipelines == 2 and not any(f.done() for f in first)

    # And a third makes three: the queue leaves in a write of its own, the BLPOP still unanswered
    third = asyncio.ensure_future(pipeliner.execute_command("INCR", "n"))
    await _ticks()
    assert (pipeliner.pipelines, pipeliner.commands) == (3, 5)
    assert not blocked.done()

    # Then Redis answers them in order once the BLPOP is released (from another connection)
    await redis_client.rpush("go", "1")
    assert await blocked == ["go", "1"]
    assert sorted(await asyncio.gather(*first, third)) == [1, 2, 3]
    assert pipeliner.pending == 0


async def _ticks(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _blocked_in_redis(client: aioredis.Redis, n: int, timeout_s: float = 20.0) -> None:
    """Wait until Redis lists ``n`` clients blocked in BLPOP (the calls went out and are waiting there)."""
    deadline = time.monotonic() + timeout_s
    while True:
        blocked = [c for c in await client.client_list() if c["cmd"] == "blpop"]
        if len(blocked) == n:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {n} clients blocked in BLPOP: {blocked}"
        await asyncio.sleep(0.01)


async def test_an_error_reply_fails_only_its_own_call(
    redis_client: aioredis.Redis, pipeliners: list[Pipeliner]
) -> None:
    await redis_client.set("text", "not a number")
    pipeliner = _made(pipeliners, Pipeliner(redis_client))
    results = await asyncio.gather(
        pipeliner.execute_command("INCR", "a"),
        pipeliner.execute_command("INCR", "text"),
        pipeliner.execute_command("EVALSHA", "0" * 40, 0),
        pipeliner.execute_command("INCR", "b"),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[3] == 1
    assert isinstance(results[1], ResponseError)
    assert isinstance(results[2], NoScriptError)  # redis-py's exception classes
    assert pipeliner.pipelines == 1


async def test_an_argument_redis_cannot_encode_fails_its_caller_at_once(
    redis_client: aioredis.Redis, pipeliners: list[Pipeliner]
) -> None:
    pipeliner = _made(pipeliners, Pipeliner(redis_client))
    with pytest.raises(DataError):
        await pipeliner.execute_command("SET", "k", None)
    assert pipeliner.pending == 0
    assert await pipeliner.execute_command("SET", "k", 1.5) == "OK"
    assert await redis_client.get("k") == "1.5"


async def test_scripts_run_through_it_unchanged_and_reload_after_a_function_flush(
    redis_client: aioredis.Redis, pipeliners: list[Pipeliner]
) -> None:
    # Given a limiter whose script calls go through the pipeliner (as the like endpoints do)
    pipeliner = _made(pipeliners, Pipeliner(redis_client, max_batch=512))
    limiter = limiter_on(pipeliner)
    like = Limit("like", 100, 60_000)
    await redis_client.execute_command("FUNCTION", "FLUSH")  # whatever earlier tests loaded
    await redis_client.config_resetstat()

    # When one user sends 150 likes at once, then 150 more after the functions were flushed again
    first = await asyncio.gather(*(limiter.check("user-1", like) for _ in range(150)))
    await redis_client.execute_command("FUNCTION", "FLUSH")
    second = await asyncio.gather(*(limiter.check("user-1", like) for _ in range(150)))

    # Then exactly the limit is admitted, with distinct remaining counts, in few round trips
    admitted = [d for d in first + second if d.allowed]
    assert sorted(d.remaining for d in admitted) == list(range(100))
    assert sum(d.allowed for d in second) == 0
    # every call met "Function not found" once and was re-sent after ONE load of the library per
    # flush (the callers waited for the same one): 600 commands, in a handful of writes
    assert pipeliner.commands == 600
    assert pipeliner.pipelines <= 10
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_function|load"]["calls"] == 2
    assert stats["cmdstat_fcall"]["calls"] == 600


async def test_a_connection_that_stops_answering_fails_exactly_the_calls_waiting_on_it(
    redis_url: str, pipeliners: list[Pipeliner]
) -> None:
    async with aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=0.3) as client:
        pipeliner = _made(pipeliners, Pipeliner(client))
        assert await pipeliner.execute_command("INCR", "before") == 1
        # Given calls stuck behind a command that blocks the connection past the socket timeout
        stuck = [
            asyncio.ensure_future(pipeliner.execute_command("BLPOP", "never-pushed", 30)),
            asyncio.ensure_future(pipeliner.execute_command("INCR", "behind-it")),
        ]
        # Then both fail with redis-py's TimeoutError, and nothing else is left waiting
        results = await asyncio.gather(*stuck, return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert pipeliner.pending == 0
        # And the next call opens a new connection and succeeds
        assert await pipeliner.execute_command("INCR", "before") == 2


async def test_a_lost_connection_fails_its_waiting_calls_and_the_next_ones_reconnect(
    redis_client: aioredis.Redis, pipeliners: list[Pipeliner]
) -> None:
    pipeliner = _made(pipeliners, Pipeliner(redis_client))
    connection_id = await pipeliner.execute_command("CLIENT", "ID")
    waiting = asyncio.ensure_future(pipeliner.execute_command("BLPOP", "never-pushed", 60))
    await _blocked_in_redis(redis_client, 1)
    assert await redis_client.client_kill_filter(_id=connection_id) == 1
    with pytest.raises(RedisConnectionError):
        await waiting
    assert await pipeliner.execute_command("CLIENT", "ID") != connection_id
    assert pipeliner.pending == 0


async def test_an_unreachable_redis_is_a_connection_error(pipeliners: list[Pipeliner]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    async with aioredis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
        pipeliner = _made(pipeliners, Pipeliner(client))
        results = await asyncio.gather(
            *(pipeliner.execute_command("PING") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        assert pipeliner.pending == 0


async def test_the_queue_is_bounded(
    redis_url: str, redis_client: aioredis.Redis, pipeliners: list[Pipeliner]
) -> None:
    async with aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=30) as client:
        pipeliner = _made(pipeliners, Pipeliner(client, max_batch=1, max_pending=2, timeout=0.2))
        # Given two calls that Redis answers only when their lists get an element (pushed below)
        blocked = [
            asyncio.ensure_future(pipeliner.execute_command("BLPOP", f"bounded-{i}", 20)) for i in range(2)
        ]
        assert pipeliner.pending == 2
        await _blocked_in_redis(redis_client, 1)  # the first went out (the second waits behind it)

        # A third call waits for room; past the timeout it is refused as a connection error
        with pytest.raises(PipelineFullError):
            await pipeliner.execute_command("PING")
        assert pipeliner.pending == 2

        # One that waits long enough gets in once a blocked call has answered
        pipeliner.timeout = 30
        ping = asyncio.ensure_future(pipeliner.execute_command("PING"))
        await _ticks()
        assert not ping.done()
        await redis_client.rpush("bounded-0", "a")
        await redis_client.rpush("bounded-1", "b")
        assert await ping in (True, "PONG")
        assert await asyncio.gather(*blocked) == [["bounded-0", "a"], ["bounded-1", "b"]]
        assert pipeliner.pending == 0


async def test_a_cancelled_caller_is_not_sent(
    redis_client: aioredis.Redis, pipeliners: list[Pipeliner]
) -> None:
    pipeliner = _made(pipeliners, Pipeliner(redis_client))
    await pipeliner.execute_command("PING")
    cancelled = asyncio.ensure_future(pipeliner.execute_command("INCR", "cancelled"))
    kept = asyncio.ensure_future(pipeliner.execute_command("INCR", "kept"))
    cancelled.cancel()
    assert await kept == 1
    assert await redis_client.get("cancelled") is None
    assert pipeliner.commands == 2 and pipeliner.pending == 0


@pytest.mark.slow
async def test_it_routes_every_call_by_slot_on_a_redis_cluster(redis_cluster: RedisClusterServers) -> None:
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True, max_connections=64)
    try:
        await client.initialize()
        pipeliner = Pipeliner(client)  # redis-py cluster pipelines: nothing of its own to close
        limiter = limiter_on(pipeliner)
        like = Limit("like", 5, 60_000)
        users = [f"user-{i}" for i in range(30)]
        first = await asyncio.gather(*(limiter.check(u, like) for u in users for _ in range(7)))
        for node in redis_cluster.nodes:
            async with aioredis.Redis.from_url(node.url) as node_client:
                await node_client.script_flush()
        second = await asyncio.gather(*(limiter.check(u, like) for u in users for _ in range(3)))
        admitted = [u for u, d in zip([u for u in users for _ in range(7)], first, strict=True) if d.allowed]
        assert sorted(admitted) == sorted(u for u in users for _ in range(5))
        assert sum(d.allowed for d in second) == 0
    finally:
        await client.aclose()
