"""Domain errors, and the one definition of "unavailable" for Redis and for Postgres.

The core raises these; it knows nothing of HTTP. The api maps each class to a status in one place
(``api/errors.py``), the consumer asks ``is_unavailable`` whether to retry without counting a try.

- ``REDIS_ERRORS`` / ``PG_ERRORS``: what a call to Redis or Postgres may raise when the server, the
  network or the query fails (what a fallback or a retry loop catches).
- ``UNREACHABLE`` / ``is_unavailable``: the narrower set that says a server could not be *reached* (down,
  restarting, failing over, at maxmemory with only unflushed data): retrying later can work. A server's
  error answer (a missing table, a script error) is not unavailable: retrying it forever would only hide
  a bug.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)
PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TimeoutError,
)


class DomainError(Exception):
    """A request the domain refuses, or cannot serve now: a stable machine-readable ``code``, a sentence,
    and fields the answer carries (``extra``). ``retry_after_s``: when retrying can work."""

    def __init__(self, code: str, message: str, *, retry_after_s: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.extra = extra


class NotFound(DomainError):
    """What the request names does not exist (or is not the caller's)."""


class Forbidden(DomainError):
    """The caller may not do this."""


class Conflict(DomainError):
    """The request conflicts with the state: a limit reached, an item already there, a deleted parent."""


class Invalid(DomainError):
    """The request is well-formed but cannot apply (a position out of range, another item's comment)."""


class KeyReused(Invalid):
    """The Idempotency-Key came with a different request (on this ``scope``)."""

    def __init__(self, scope: str = "") -> None:
        where = f" on this {scope}" if scope else ""
        super().__init__(
            "idempotency_key_reused", f"This Idempotency-Key was already used for a different request{where}."
        )


class Refused(DomainError):
    """Refused for now by a limit (the rate limiter); ``retry_after_s``, also in the answer, says when to
    try again."""

    def __init__(self, code: str, message: str, *, retry_after_s: int, **extra: Any) -> None:
        super().__init__(code, message, retry_after_s=retry_after_s, **extra)
        self.extra["retry_after_s"] = retry_after_s


class Unavailable(DomainError):
    """A dependency cannot serve this request now; retrying after ``retry_after_s`` can work. Raised
    ``from`` the error that said so (``is_unavailable`` reads it)."""

    def __init__(self, message: str, retry_after_s: int, code: str = "unavailable") -> None:
        super().__init__(code, message, retry_after_s=retry_after_s)


class MemoryFull(Unavailable):
    """Redis is at maxmemory with nothing left it may evict (only changes not yet written to Postgres);
    the flusher is freeing memory (docs/redis-memory.md)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "Redis is full of changes not yet written to Postgres; retry later.",
            retry_after_s,
            "redis_memory_full",
        )


class ColdLoadError(RuntimeError):
    """A script still found cold keys missing after its loads (they were evicted again at once each
    time: Redis is evicting as fast as the store loads)."""


class PurgeIncomplete(Exception):
    """Some steps of a user's purge failed; what the others removed is in ``summary``, each failed
    step's error in ``errors`` (parallel to ``failed``). Run the purge again."""

    def __init__(self, summary: dict[str, Any], failed: list[str], errors: list[BaseException]) -> None:
        reasons = "; ".join(
            f"{name}: {type(exc).__name__}: {exc}" for name, exc in zip(failed, errors, strict=True)
        )
        super().__init__(f"purge of a user incomplete: steps failed ({reasons})")
        self.summary = summary
        self.failed = failed
        self.errors = errors


UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # BusyLoadingError (Redis loading its data) included
    RedisTimeoutError,
    ReadOnlyError,  # a replica that was the master: failing over
    MasterDownError,
    ClusterDownError,
    TryAgainError,
    OutOfMemoryError,  # Redis at maxmemory with nothing evictable: the flusher is freeing memory
    ColdLoadError,  # cold keys evicted again as fast as they were loaded: Redis under memory pressure
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError included
    asyncpg.CannotConnectNowError,  # starting up
    asyncpg.AdminShutdownError,  # shutting down
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says a server could not be reached (retry later) rather than that it refused or
    failed the request."""
    if isinstance(exc, UNREACHABLE):
        return True
    if isinstance(exc, asyncpg.InterfaceError):  # "connection is closed", "pool is closing"...
        return not isinstance(exc, ValueError)  # ... but not the client's DataError or configuration
    if isinstance(exc, PurgeIncomplete):
        return all(map(is_unavailable, exc.errors))
    if isinstance(exc, Unavailable):
        return exc.__cause__ is None or is_unavailable(exc.__cause__)
    return False
