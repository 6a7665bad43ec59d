"""The private test servers behave: Redis keeps data over restarts, both survive a SIGKILL."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import pytest
import redis

from daemon.proc.servers import PostgresServer, RedisServer, ServerError, free_port


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert port not in (5432, 6379)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_keeps_data_across_stop_and_restart(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r") as server:
        port = server.port
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
        server.stop()
        server.stop()  # idempotent
        assert not server.is_running()
        server.restart()
        assert server.port == port and server.is_running()
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") == b"v"
    assert not server.is_running()


def test_redis_kill_and_restart(redis_server: RedisServer, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("a", "1")
        client.execute_command("BGREWRITEAOF")
    redis_server.kill()
    assert not redis_server.is_running()
    redis_server.restart()
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()


def test_redis_url_gives_an_empty_running_server(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == redis_server.url and redis_server.port != 6379
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_start_fails_with_log_tail_when_port_taken(tmp_path: Path, redis_server: RedisServer) -> None:
    if not redis_server.is_running():
        redis_server.start()
    with pytest.raises(ServerError, match="in use"):
        RedisServer(tmp_path / "r2", port=redis_server.port).start()


async def test_postgres_accepts_queries(pg_server: PostgresServer, database_url: str) -> None:
    assert pg_server.port != 5432
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT 1 + 1") == 2
        assert await conn.fetchval("SELECT current_database()") == database_url.rsplit("/", 1)[1]
    finally:
        await conn.close()


async def test_postgres_survives_kill_and_restart(pg_server: PostgresServer, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
    finally:
        await conn.close()
    pg_server.kill()
    assert not pg_server.is_running()
    pg_server.restart()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT x FROM t") == 42
    finally:
        await conn.close()


def test_postgres_own_cluster_init_stop_restart(tmp_path: Path, servers_dir: Path) -> None:
    data_dir = servers_dir / "pg-own"
    with PostgresServer(data_dir) as server:
        server.create_database("app")
        server.create_database("app")  # idempotent
        server.psql("CREATE TABLE t (x text); INSERT INTO t VALUES ('kept')", dbname="app")
        server.stop()
        server.restart()
        assert server.psql("SELECT x FROM t", dbname="app").strip() == "kept"
        assert server.dsn("app") == f"postgresql://postgres@127.0.0.1:{server.port}/app"
    assert not server.is_running()
    assert not (data_dir / "postmaster.pid").exists()
