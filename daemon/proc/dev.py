"""``engagementd dev``: the whole service on one machine in one command (what ``make run`` starts).

Private Redis and Postgres in the data folder (``ENGAGEMENT_DEV_DATA_DIR``, default ``.data``),
started from the installed binaries (Postgres as the ``postgres`` user when run as root), the schema
migrated, then the api and the flusher as child processes, and the Kafka consumer when
``ENGAGEMENT_KAFKA_BOOTSTRAP`` is set (``mock``: librdkafka's mock cluster, started here and shared by
the api's producer and the consumer). One Ctrl-C (or SIGTERM) stops them all: the api drains its view
buffer, the flusher finishes its pass, the consumer commits its batch, the servers shut down cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jwt

from daemon import db
from daemon.kafka_mock import MockCluster
from daemon.proc.servers import PostgresServer, RedisServer, free_port
from daemon.settings import Settings

log = logging.getLogger(__name__)

DATABASE = "engagement"


def _dev_secret(data_dir: Path, settings: Settings) -> str:
    if settings.jwt_secret:
        return settings.jwt_secret
    path = data_dir / "jwt_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _tokens(secret: str) -> dict[str, str]:
    """Tokens for trying the service by hand, valid 24 h: a user's, an ingest service's, an operator's."""
    exp = int(time.time()) + 86_400
    claims = {
        "TOKEN": {"sub": "dev-user"},
        "INGEST": {"sub": "dev-ingest", "scope": "ingest"},
        "INTERNAL": {"sub": "dev-ops", "scope": "internal"},
    }
    return {name: jwt.encode({**body, "exp": exp}, secret, "HS256") for name, body in claims.items()}


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: a Ctrl-C reaches only this supervisor, which stops the children in order.
    return subprocess.Popen([sys.executable, "-m", "daemon.proc.cli", *args], env=env, start_new_session=True)


def _port_free(host: str, port: int) -> bool:
    """Whether the api could listen on ``host:port`` (checked before anything starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def run_dev(settings: Settings, host: str, port: int) -> int:
    if not _port_free(host, port):
        print(
            f"engagementd dev: {host}:{port} is already in use (another make run?); stop it, or choose"
            f" another port: make run PORT={port + 1}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    data_dir = Path(settings.dev_data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(data_dir / "redis")
    postgres = PostgresServer(data_dir / "postgres")
    children: dict[str, subprocess.Popen[bytes]] = {}  # "engagementd api" -> its process
    mock: MockCluster | None = None
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        redis.start()
        postgres.init()
        postgres.start()
        postgres.create_database(DATABASE)
        secret = _dev_secret(data_dir, settings)
        settings = settings.replace(
            redis_url=redis.url,
            database_url=postgres.dsn(DATABASE),
            jwt_secret="" if settings.jwt_public_key else secret,
        )
        asyncio.run(db.migrate(settings))
        if settings.kafka_bootstrap == "mock":  # one mock cluster for every child
            mock = MockCluster()
            settings = settings.replace(
                kafka_bootstrap=mock.bootstrap_servers, consumer_group_protocol="consumer"
            )
        env = {**os.environ, **settings.as_env()}
        metrics_port = free_port()
        children["engagementd api"] = _spawn(["api", "--host", host, "--port", str(port)], env)
        flusher = ["flusher", "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"]
        children["engagementd flusher"] = _spawn(flusher, env)
        consumer_port = free_port() if settings.kafka_bootstrap else None
        if consumer_port is not None:
            consume = ["consume", "--metrics-port", str(consumer_port), "--metrics-host", "127.0.0.1"]
            children["engagementd consume"] = _spawn(consume, env)
        secret_shown = secret if not settings.jwt_public_key else None
        _announce(settings, data_dir, host, port, metrics_port, consumer_port, secret_shown)
        while not stop:
            for name, child in children.items():
                if child.poll() is not None:
                    log.error(
                        "%s exited with %s (its output is above); stopping everything", name, child.returncode
                    )
                    return 1
            time.sleep(0.2)  # supervision tick: signals interrupt it
        return 0
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
        postgres.stop()
        redis.stop()
        if mock is not None:
            mock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _announce(
    settings: Settings,
    data_dir: Path,
    host: str,
    port: int,
    metrics_port: int,
    consumer_port: int | None,
    secret: str | None,
) -> None:
    lines = [
        "",
        "engagementd dev is running",
        f"  API            http://{host}:{port}   (metrics at /metrics)",
        f"  live counts    http://{host}:{port}/live/<contentId>   (a page; post views and watch)",
        f"  flusher        metrics at http://127.0.0.1:{metrics_port}/metrics",
        f"  Redis          {settings.redis_url}",
        f"  Postgres       {settings.database_url}",
    ]
    if consumer_port is not None:
        lines.append(
            f"  consumer       {settings.kafka_bootstrap}, metrics at http://127.0.0.1:{consumer_port}/metrics"
        )
    if secret:
        tokens = _tokens(secret)
        path = data_dir / "tokens.env"
        path.write_text("".join(f"{name}={value}\n" for name, value in tokens.items()))
        path.chmod(0o600)
        lines += [
            f"  JWT secret     {settings.dev_data_dir}/jwt_secret (HS256)",
            f"  user token     {tokens['TOKEN']}   (sub dev-user)",
            f"  ingest token   {tokens['INGEST']}   (scope ingest: batches)",
            f"  internal token {tokens['INTERNAL']}   (scope internal: registry, purge)",
            f"  tokens         {settings.dev_data_dir}/tokens.env (TOKEN, INGEST, INTERNAL; valid 24 h):"
            f" . {settings.dev_data_dir}/tokens.env",
        ]
    lines += ["  Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)
