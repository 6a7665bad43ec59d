"""The messages that are not view counts: one action each, tried, retried with backoff, or given up.

- ``media_liked`` / ``media_disliked``: ``set_reaction.lua`` exactly as ``POST .../like`` and
  ``.../dislike`` (without the per-user rate limit: the producer is a trusted service), all of a
  batch pipelined in one round trip, in offset order. The Idempotency-Key is
  ``kafka:<topic>:<partition>:<offset>``, so a replayed message returns the stored answer and
  changes nothing (the seed's idempotency record, checked in the same call that applies).
- ``media_shared``: ``daemon.shares.add_share`` exactly as ``POST .../shares`` (a row in ``shares`` and
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
when every step that failed met an unreachable server; a share's ``Unavailable`` by the cause it carries
(``daemon.errors.is_unavailable``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from consumer.dlq import DeadLetter
from consumer.messages import REACTION_ACTIONS, IngestEvent
from consumer.metrics import ConsumerMetrics
from daemon.core import Core
from daemon.errors import DomainError, is_unavailable
from daemon.loops import Backoff
from daemon.registry import ContentRegistry
from daemon.shares import add_share

log = logging.getLogger(__name__)

PurgeUser = Callable[[str], Awaitable[Any]]

REACTION, SHARE, REGISTRY, PURGE = "reaction", "share", "registry", "purge"


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


class ActionRunner:
    def __init__(
        self, core: Core, metrics: ConsumerMetrics, purge_user: PurgeUser | None, stopping: Callable[[], bool]
    ) -> None:
        self._core = core
        self._settings = core.settings
        self._metrics = metrics
        self._purge_user = purge_user
        self._registry = ContentRegistry(core.settings, core.redis, core.pool, core.metrics)
        self._stopping = stopping

    async def run(self, actions: list[Action]) -> list[DeadLetter]:
        """Apply every action; returns the dead letters of those that failed every try."""
        settings = self._settings
        dead: list[DeadLetter] = []
        backoff = Backoff(settings.consumer_retry_base_ms / 1000, settings.consumer_retry_max_ms / 1000)
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
                    cause = error.__cause__ if isinstance(error, DomainError) and error.__cause__ else error
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
                await asyncio.sleep(backoff.next())  # exponential backoff between tries
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
            results = await self._core.store.set_reactions(calls)
        except Exception as exc:
            return [(action, exc) for action in actions]
        return [
            (action, result if isinstance(result, Exception) else None)
            for action, result in zip(actions, results, strict=True)
        ]

    async def _one(self, action: Action) -> None:
        if action.kind == SHARE:
            content_id, user_id, platform, external = action.args
            await add_share(self._core, content_id, user_id, platform, external, action.key)
        elif action.kind == REGISTRY:
            await self._registry.put(*action.args)
        elif action.kind == PURGE:
            assert self._purge_user is not None
            await self._purge_user(action.args[0])
        else:
            raise AssertionError(action.kind)
