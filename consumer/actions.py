"""The messages that are not view counts: one action each, tried, retried with backoff, or given up.

- ``media_liked`` / ``media_disliked``: ``set_reaction.lua`` exactly as ``POST .../like`` and
  ``.../dislike`` (without the per-user rate limit: the producer is a trusted service), all of a
  batch pipelined in one round trip, in offset order. The Idempotency-Key is
  ``kafka:<topic>:<partition>:<offset>``, so a replayed message returns the stored answer and
  changes nothing (the seed's idempotency record, checked in the same call that applies).
- ``media_shared``: ``api.shares.add_share`` exactly as ``POST .../shares`` (a row in ``shares`` and
  a count), with the same key.
- ``media.published``: the content registry's PUT (``ContentRegistry.put``): idempotent.
- ``user.deleted``: the injected ``purge_user(user_id)``: idempotent (purging twice removes nothing
  more).

A failure is either *unavailable* (``is_unavailable``: Redis or Postgres unreachable, restarting or
failing over, or Redis at maxmemory with only unflushed data, which the flusher frees): the action is
retried with backoff for as long as it takes and no try is counted, since dead-lettering a whole
stream because a server restarted would only move the problem; or a *handler failure* (anything
else, a server's error answer included: a missing table, a script error): a try is counted, the action
is retried with exponential backoff, and after ``consumer_retry_max_tries`` tries it is dead-lettered
with the last error. A purge is unavailable only
when every step that failed met an unreachable server; a share's 503 by the cause it carries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from confluent_kafka import Message
from redis.exceptions import ClusterDownError, MasterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.errors import ApiError
from api.registry import ContentRegistry
from api.shares import add_share
from consumer.dlq import DeadLetter
from consumer.messages import REACTION_ACTIONS, IngestEvent
from consumer.metrics import ConsumerMetrics
from daemon.metrics import Metrics
from daemon.purge import PurgeIncomplete
from daemon.settings import Settings
from daemon.store import Store
from daemon.store.cold import ColdLoadError
from lua import Scripts

log = logging.getLogger(__name__)

PurgeUser = Callable[[str], Awaitable[Any]]

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
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
REACTION, SHARE, REGISTRY, PURGE = "reaction", "share", "registry", "purge"


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says a server could not be reached (retry without counting a try) rather than
    that it refused or failed this message."""
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return True
    if isinstance(exc, asyncpg.InterfaceError):  # "connection is closed", "pool is closing"...
        return not isinstance(exc, ValueError)  # ... but not the client's DataError or configuration
    if isinstance(exc, PurgeIncomplete):
        return all(map(is_unavailable, exc.errors))
    if isinstance(exc, ApiError) and exc.status == 503 and exc.__cause__ is not None:
        return is_unavailable(exc.__cause__)
    return False


class Abandoned(Exception):
    """Shutdown was requested while the batch waited for an unreachable dependency: it is given up
    uncommitted (and applied again, idempotently, on restart)."""


@dataclass(slots=True)
class Action:
    msg: Message
    kind: str
    args: tuple[Any, ...]
    tries: int = 0
    error: str = ""

    @property
    def key(self) -> str:
        """The Idempotency-Key of this message: its topic, partition and offset."""
        msg = self.msg
        return f"kafka:{msg.topic()}:{msg.partition()}:{msg.offset()}"


def ingest_action(msg: Message, event: IngestEvent, kind: str) -> Action:
    if kind == REACTION:
        return Action(msg, REACTION, (event.content_id, event.user_id, REACTION_ACTIONS[event.event_type]))
    return Action(msg, SHARE, (event.content_id, event.user_id, event.platform, event.external))


@dataclass
class Deps:
    """What the api's share and registry code needs (the attributes of api.services.Services)."""

    settings: Settings
    redis: Any
    scripts: Scripts
    pool: Callable[[], Awaitable[asyncpg.Pool]]
    store: Store
    metrics: Metrics


class ActionRunner:
    def __init__(
        self, deps: Deps, metrics: ConsumerMetrics, purge_user: PurgeUser | None, stopping: Callable[[], bool]
    ) -> None:
        self._deps = deps
        self._settings = deps.settings
        self._metrics = metrics
        self._purge_user = purge_user
        self._registry = ContentRegistry(deps.settings, deps.redis, deps.pool, deps.metrics)
        self._stopping = stopping

    async def run(self, actions: list[Action]) -> list[DeadLetter]:
        """Apply every action; returns the dead letters of those that failed every try."""
        settings = self._settings
        dead: list[DeadLetter] = []
        delay = settings.consumer_retry_base_ms / 1000
        ceiling = settings.consumer_retry_max_ms / 1000
        pending = actions
        while pending:
            retry: list[Action] = []
            for action, error in await self._round(pending):
                if error is None:
                    self._metrics.applied.labels(action.msg.topic()).inc()
                elif is_unavailable(error):
                    self._metrics.retries.labels("unavailable").inc()
                    retry.append(action)
                else:
                    action.tries += 1
                    cause = error.__cause__ if isinstance(error, ApiError) and error.__cause__ else error
                    action.error = f"{type(cause).__name__}: {cause}"
                    if action.tries >= settings.consumer_retry_max_tries:
                        log.error("%s failed %d tries: %s", action.key, action.tries, action.error)
                        dead.append(DeadLetter.of(action.msg, "handler_failed", action.error, action.tries))
                    else:
                        self._metrics.retries.labels("handler_failed").inc()
                        retry.append(action)
            pending = retry
            if pending:
                if self._stopping():
                    raise Abandoned
                await asyncio.sleep(delay)  # exponential backoff between tries
                delay = min(delay * 2, ceiling)
        return dead

    async def _round(self, actions: list[Action]) -> list[tuple[Action, BaseException | None]]:
        out: list[tuple[Action, BaseException | None]] = []
        reactions = [a for a in actions if a.kind == REACTION]
        if reactions:
            out += await self._reactions(reactions)
        for action in actions:
            if action.kind != REACTION:
                try:
                    await self._one(action)
                    out.append((action, None))
                except Exception as exc:  # classified by the caller
                    out.append((action, exc))
        return out

    async def _reactions(self, actions: list[Action]) -> list[tuple[Action, BaseException | None]]:
        calls = [(*action.args, action.key) for action in actions]  # content_id, user_id, verb, key
        try:
            results = await self._deps.store.set_reactions(calls)
        except Exception as exc:
            return [(action, exc) for action in actions]
        return [
            (action, result if isinstance(result, Exception) else None)
            for action, result in zip(actions, results, strict=True)
        ]

    async def _one(self, action: Action) -> None:
        if action.kind == SHARE:
            content_id, user_id, platform, external = action.args
            await add_share(self._deps, content_id, user_id, platform, external, action.key)  # type: ignore[arg-type]
        elif action.kind == REGISTRY:
            await self._registry.put(*action.args)
        elif action.kind == PURGE:
            assert self._purge_user is not None
            await self._purge_user(action.args[0])
        else:
            raise AssertionError(action.kind)
