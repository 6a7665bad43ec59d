"""Postgres: connection pools and the numbered SQL migrations."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg

from daemon.settings import Settings

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant: serialises concurrent `engagementd migrate` runs.
_MIGRATION_LOCK = 0x656E6761


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("daemon.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


async def connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database_url, timeout=settings.db_timeout_s)


async def create_pool(settings: Settings) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        timeout=settings.db_timeout_s,
        command_timeout=max(settings.db_timeout_s, 30.0),
    )


class LazyPool:
    """The Postgres pool, created on first use (``await lazy()``), so that a process starts, and does
    what needs no Postgres, while Postgres is down; a failed creation is tried again on the next use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await create_pool(self._settings)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def provided(pool: asyncpg.Pool) -> Callable[[], Awaitable[asyncpg.Pool]]:
    """An existing pool in the shape of a ``LazyPool`` (what the store takes)."""

    async def get() -> asyncpg.Pool:
        return pool

    return get


async def migrate(settings: Settings) -> list[Migration]:
    """Apply every migration not yet applied, each in its own transaction. Idempotent."""
    conn = await connect(settings)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for m in migrations():
            if m.version in done:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name
                )
            log.info("applied migration %04d_%s", m.version, m.name)
            applied.append(m)
        return applied
    finally:
        await conn.close()
