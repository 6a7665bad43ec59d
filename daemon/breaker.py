"""The api's circuit breaker for a Redis that hangs (docs/operations.md, "When Redis hangs").

A Redis that refuses connections fails every call at once; the request falls back to Postgres or answers
503. A Redis that hangs (stopped, its event loop blocked, a network black hole) answers nothing: each call
waits its socket timeout (``ENGAGEMENT_REDIS_TIMEOUT_S``), and a request that makes several calls in turn
(its script, the fallback's own Redis call, an idempotency record) would wait several timeouts.

So the first call that times out opens the breaker, for the whole process: from then every call fails at
once with ``RedisUnavailableError`` (a redis-py ``ConnectionError``, which every caller already handles
as "Redis is down"). ``cooldown_s`` later the next call goes to Redis as the probe while the others keep
failing at once: its answer closes the breaker, its timeout opens it again. Any answer from Redis closes
it (a call sent before it opened that completes late included). A request therefore waits for Redis at
most about one timeout, however many calls it makes.

Only timeouts open it: a refused or reset connection fails fast already, and an error reply (a script
error, OOM) is an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

TIMEOUTS = (RedisTimeoutError, TimeoutError)


class RedisUnavailableError(RedisConnectionError):
    """The breaker is open: Redis did not answer within its timeout, and has not answered since."""


class Breaker:
    """``cooldown_s``: how long it stays open before a probe; ``timeout_s``: the calls' own timeout (a
    probe that never reports, its caller gone, is replaced after ``cooldown_s + timeout_s``)."""

    __slots__ = ("cooldown_s", "timeout_s", "open", "probing", "retry_at", "trips", "on_change")

    def __init__(
        self, cooldown_s: float, timeout_s: float, on_change: Callable[[bool], None] | None = None
    ) -> None:
        self.cooldown_s = cooldown_s
        self.timeout_s = timeout_s
        self.open = False
        self.probing = False  # a probe is out: the other calls keep failing
        self.retry_at = 0.0  # while open: monotonic time from which the next call probes
        self.trips = 0
        self.on_change = on_change  # called with the new state (True: open)

    def admit(self) -> None:
        """Return if a call may go to Redis now (closed, or this call is the probe); else raise."""
        if not self.open:
            return
        now = time.monotonic()
        if now < self.retry_at:
            raise RedisUnavailableError(
                "Redis did not answer within its timeout; calls fail at once until it answers again"
            )
        self.probing = True
        self.retry_at = now + self.cooldown_s + self.timeout_s

    def answered(self) -> None:
        """Redis answered a call: closed."""
        if self.open:
            self.open = False
            self.probing = False
            if self.on_change is not None:
                self.on_change(False)

    def timed_out(self) -> None:
        """A call got no answer within its timeout: open (again) for ``cooldown_s``."""
        was_open = self.open
        self.open = True
        self.probing = False
        self.retry_at = time.monotonic() + self.cooldown_s
        if not was_open:
            self.trips += 1
            if self.on_change is not None:
                self.on_change(True)

    def failed(self) -> None:
        """A call failed otherwise (refused, reset, cancelled): if a probe was out, the next call
        probes at once (a refused connection costs nothing to try)."""
        if self.probing:
            self.probing = False
            self.retry_at = time.monotonic()


async def _watched(breaker: Breaker, call: Any) -> Any:
    """Await a call ``breaker`` admitted; tell it how the call ended. An error reply (a script error,
    NOSCRIPT, OOM) is an answer; a cancelled call says nothing (a probe cancelled is replaced after its
    time)."""
    try:
        result = await call
    except TIMEOUTS:
        breaker.timed_out()
        raise
    except ResponseError:
        breaker.answered()
        raise
    except asyncio.CancelledError:
        raise
    except BaseException:
        breaker.failed()
        raise
    breaker.answered()
    return result


def guarded(client: Any) -> Breaker | None:
    """The breaker of a client ``make_redis`` made with one."""
    return getattr(client, "breaker", None)


class GuardedPipeline(Pipeline):
    breaker: Breaker

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not len(self):  # nothing is sent: no answer either
            return await super().execute(raise_on_error)
        self.breaker.admit()
        return await _watched(self.breaker, super().execute(raise_on_error))


class GuardedRedis(aioredis.Redis):
    """redis-py's client with ``breaker`` in front of every command and pipeline."""

    breaker: Breaker

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.breaker.admit()
        return await _watched(self.breaker, super().execute_command(*args, **options))

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = GuardedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.breaker = self.breaker
        return pipe


class GuardedClusterPipeline(ClusterPipeline):
    breaker: Breaker

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        if not len(self):  # nothing is sent: no answer either
            return await super().execute(raise_on_error, allow_redirections)
        self.breaker.admit()
        return await _watched(self.breaker, super().execute(raise_on_error, allow_redirections))


class GuardedRedisCluster(RedisCluster):
    """The cluster client likewise; one breaker for the cluster (a hung node opens it for every slot).
    ``make_redis`` gives it no retries: redis-py's cluster client retries timeouts (with a topology
    refresh that waits on the hung node too), which cost ~15 timeouts per call on a hung node."""

    breaker: Breaker

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self.breaker.admit()
        return await _watched(self.breaker, super().execute_command(*args, **kwargs))

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:  # as RedisCluster.pipeline
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        pipe = GuardedClusterPipeline(self, transaction)
        pipe.breaker = self.breaker
        return pipe
