"""The scripts as one Redis function library (lua/__init__.py): what is registered, loading it when Redis
lacks it, and EVAL when Redis refuses to load it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

import lua
from daemon.pipeliner import Pipeliner
from daemon.proc.servers import RedisClusterServers
from lua import Scripts


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with aioredis.Redis.from_url(redis_url, decode_responses=True, max_connections=300) as c:
        await c.execute_command("FUNCTION", "FLUSH")
        yield c
        await c.config_set("maxmemory", 0)
        await c.execute_command("FUNCTION", "FLUSH")


def _shebang_flags(name: str) -> list[str]:
    first = resources.files(lua).joinpath(f"{name}.lua").read_text().splitlines()[0]
    return first.split("flags=")[1].split(",") if "flags=" in first else []


async def test_every_script_is_a_function_of_one_library_with_its_shebang_flags(
    client: aioredis.Redis,
) -> None:
    # Given the scripts as the processes load them
    scripts = Scripts.load()
    library = scripts.set_reaction.library
    assert library is not None

    # When a call meets Redis without the library (a fresh server)
    assert await scripts.rate_limit(client, ["eng:{u:u1}:rl:like"], [60_000, 5, "r1"]) == [1, 4, 0]

    # Then Redis holds exactly the one library, with one function per script file, each with the flags
    # of the file's shebang line, named after the library's version
    (info,) = await client.execute_command("FUNCTION", "LIST")  # redis-py: a dict per library
    assert info["library_name"] == library.name == f"engagementd_{library.version}"
    functions = {f["name"]: sorted(f["flags"]) for f in info["functions"]}
    names = [f.name for f in resources.files(lua).iterdir() if f.name.endswith(".lua")]
    expected = {f"{n[:-4]}_{library.version}": sorted(_shebang_flags(n[:-4])) for n in names}
    assert functions == expected
    assert {getattr(scripts, s).function for s in Scripts.__slots__} == set(expected)
    assert ["allow-oom"] in functions.values() and ["no-writes"] in functions.values()


async def test_callers_that_meet_a_flushed_library_share_one_load(client: aioredis.Redis) -> None:
    # Given a pipeliner, as the api's hot paths use, and Redis without the library
    scripts = Scripts.load()
    pipeliner = Pipeliner(client)
    try:
        await client.config_resetstat()

        # When 200 requests call a script at once, and again after FUNCTION FLUSH
        for _ in range(2):
            answers = await asyncio.gather(
                *(
                    scripts.rate_limit(pipeliner, [f"eng:{{u:u{i}}}:rl:like"], [60_000, 1, "r"])
                    for i in range(200)
                )
            )
            assert answers == [[1, 0, 0]] * 200 or answers == [[0, 0, answers[0][2]]] * 200
            await client.execute_command("FUNCTION", "FLUSH")

        # Then the library was loaded once per flush, each call answered by its function after that load
        stats = await client.info("commandstats")
        assert stats["cmdstat_function|load"]["calls"] == 2
        assert stats["cmdstat_fcall"]["calls"] == 800  # 200 not found + 200 answered, twice
        assert "cmdstat_eval" not in stats
    finally:
        await pipeliner.aclose()


async def test_a_call_sent_before_the_last_load_ended_does_not_load_again(client: aioredis.Redis) -> None:
    # Given the library and a moment before any load
    library = Scripts.load().rate_limit.library
    assert library is not None
    before = time.monotonic()
    await client.config_resetstat()

    # When a call sent then meets "Function not found" (its answer was on its way while another caller's
    # load ran), and later a call sent after that load meets it too (FUNCTION FLUSH meanwhile)
    await library.ensure(client, before)
    await library.ensure(client, before)
    await client.execute_command("FUNCTION", "FLUSH")
    await library.ensure(client, time.monotonic())

    # Then the first two share one load and only the last loads again
    stats = await client.info("commandstats")
    assert stats["cmdstat_function|load"]["calls"] == 2
    assert [e["library_name"] for e in await client.execute_command("FUNCTION", "LIST")] == [library.name]


async def test_a_library_redis_refuses_to_load_leaves_the_calls_to_eval(client: aioredis.Redis) -> None:
    # Given a lease held in Redis, then Redis at maxmemory (noeviction) without the library: FUNCTION LOAD
    # is refused there, and so would be any script not flagged allow-oom
    scripts = Scripts.load()
    await client.set("eng:{s:0}:lease", "owner-1|99999999999999")
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", 1)
    calls = [(["eng:{s:0}:lease"], ["owner-2"]), (["eng:{s:0}:lease"], ["owner-1"])]

    # When the flusher releases the lease (release_lease.lua runs at maxmemory), one call and pipelined
    one = await scripts.release_lease(client, *calls[0])
    many = await scripts.release_lease.call_many(client, calls)

    # Then each call ran (by EVAL: the library is still absent) and answered as the function would
    assert (one, many) == (0, [0, 1])
    assert await client.exists("eng:{s:0}:lease") == 0
    assert await client.execute_command("FUNCTION", "LIST") == []
    stats = await client.info("commandstats")
    assert stats["cmdstat_eval"]["calls"] == 3


OLD = "engagementd_0123456789abcdef"  # the library of an older version of the code


def _library_text(name: str, function: str) -> str:
    body = f"redis.register_function('{function}', function(keys, args) return '{name}' end)"
    return f"#!lua name={name}\n{body}\n"


async def _libraries(client: Any) -> set[str]:
    listed = await client.execute_command("FUNCTION", "LIST")
    if isinstance(listed, dict):  # the cluster client, one node addressed
        (listed,) = listed.values()
    return {entry["library_name"] for entry in listed}


async def test_prune_deletes_the_libraries_of_other_versions_and_leaves_the_rest(
    client: aioredis.Redis,
) -> None:
    # Given the current library (loaded by a call), an older version's, and another tool's library
    scripts = Scripts.load()
    library = scripts.rate_limit.library
    assert library is not None
    await scripts.rate_limit(client, ["eng:{u:u1}:rl:like"], [60_000, 5, "r1"])
    await client.execute_command("FUNCTION", "LOAD", _library_text(OLD, "set_reaction_0123456789abcdef"))
    await client.execute_command("FUNCTION", "LOAD", _library_text("othertool", "othertool_f"))

    # When the libraries are pruned (engagementd migrate), twice
    assert await library.prune(client) == [OLD]
    assert await library.prune(client) == []

    # Then the older version's is gone; the current one and the other tool's stay and answer
    assert await _libraries(client) == {library.name, "othertool"}
    assert await scripts.rate_limit(client, ["eng:{u:u1}:rl:like"], [60_000, 5, "r2"]) == [1, 3, 0]
    assert await client.execute_command("FCALL", "othertool_f", 0) == "othertool"


@pytest.mark.slow
async def test_prune_deletes_them_on_every_primary_of_a_redis_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    # Given a three-master cluster whose every primary holds an older version's library
    for node in redis_cluster.nodes:
        async with aioredis.Redis.from_url(node.url, decode_responses=True) as node_client:
            await node_client.execute_command("FUNCTION", "LOAD", _library_text(OLD, "f_0123456789abcdef"))
    cluster = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        await cluster.initialize()
        library = Scripts.load().rate_limit.library
        assert library is not None
        # When the libraries are pruned through the cluster client
        assert await library.prune(cluster) == [OLD] * len(redis_cluster.nodes)
    finally:
        await cluster.aclose()
    # Then no primary holds it any more
    for node in redis_cluster.nodes:
        async with aioredis.Redis.from_url(node.url, decode_responses=True) as node_client:
            assert await _libraries(node_client) == set()
