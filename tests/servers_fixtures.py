"""Pytest fixtures running private Redis and PostgreSQL servers (never the shared 6379 / 5432 ones).

Session-scoped servers live under one /tmp directory the ``postgres`` system user can traverse. The
function-scoped ``redis_url`` and ``database_url`` restart a server a previous test stopped or killed.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from daemon.proc.servers import PostgresServer, RedisClusterServers, RedisServer
from daemon.settings import Settings


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    """A /tmp directory (mode 0755, so the postgres user can reach its subdirectories) for test servers."""
    path = Path(tempfile.mkdtemp(prefix="engagementd-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(servers_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(servers_dir / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_back(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session Redis, running again after the test whatever the test did to it."""
    yield redis_server
    if not redis_server.is_running():
        redis_server.start()


@pytest.fixture(scope="session")
def pg_server(servers_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(servers_dir / "pg", fast=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis, running and empty."""
    if not redis_server.is_running():
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def database_url(pg_server: PostgresServer) -> Iterator[str]:
    """A new empty database on the session Postgres, dropped after the test."""
    if not pg_server.is_running():
        pg_server.start()
    name = f"t_{uuid.uuid4().hex}"
    pg_server.create_database(name)
    yield pg_server.dsn(name)
    if pg_server.is_running():
        pg_server.drop_database(name)


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    # 16 shards; row filters of 1 MB in all (2^19 bits a shard): built in milliseconds by each flusher
    return Settings.from_env({}, redis_url=redis_url, database_url=database_url, shards=16, row_filter_mb=1)


@pytest.fixture(scope="session")
def redis_cluster_servers(servers_dir: Path) -> Iterator[RedisClusterServers]:
    """A three-master Redis Cluster, started once for the session by the first test that needs it."""
    cluster = RedisClusterServers(servers_dir / "cluster")
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_servers: RedisClusterServers) -> RedisClusterServers:
    """The session's Redis Cluster, every master emptied (keys, scripts and functions) for this test."""
    for node in redis_cluster_servers.nodes:
        with redis.Redis.from_url(node.url) as client:
            client.flushall()
            client.script_flush()
            client.function_flush()
    return redis_cluster_servers
