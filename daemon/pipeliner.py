"""Auto-pipelining: the Redis commands that concurrent requests issue share round trips.

A ``Pipeliner`` wraps one Redis client. ``execute_command`` queues a command and returns a future; the
commands queued during one event-loop tick are sent together (in writes of at most ``max_batch``
commands), and each caller's future gets its own reply or its own error.

- Plain TCP Redis (the default deployment): the pipeliner keeps ONE connection of its own, opened with
  the settings of the client's pool (host, port, db, username/password). Commands are packed here and
  written as they leave; hiredis parses the replies as bytes arrive and hands them to the waiting
  futures in order. No pool checkout, no coroutine per reply: this is what makes it cheap per call.
  Close it with ``aclose()`` (Services.stop should, after the HTTP server stopped).
  While a write's replies are outstanding, new commands wait for them, or until ``early_batch`` (8)
  are queued, and then leave together: an idle connection sends at once, and under load Redis gets
  the commands in writes of about ``early_batch``, several in flight, so the first replies come back
  before the last commands ran. Measured in the likes benchmark at 64 connections: 7% more requests/s
  than holding the queue until the replies (33 commands per write then), the same CPU per request.
- Anything else (Redis Cluster, TLS, unix sockets, RESP3, credential providers): redis-py pipelines
  (``transaction=False``), at most ``max_in_flight`` at once; Cluster routes every command by its keys'
  slot (execute_command routing, as ``LuaScript.call_many``).

It quacks like the client for scripts: ``LuaScript`` calls ``execute_command("FCALL", ...)`` on it as on a
redis-py client, "Function not found" included (that call's future raises it; the script loads its
library on ``admin_client``, the wrapped client, and re-sends the call in a later batch).

Failure isolation: an error reply (ResponseError, NOSCRIPT, a script error) fails only its own call,
with redis-py's exception class. A connection that is lost, sends garbage or gives no reply for
``socket_timeout`` fails exactly the calls waiting on it (redis-py's ConnectionError / TimeoutError),
and the next calls open a new connection. Nothing is retried: a failed call may or may not have run,
as when a single command's reply is lost. A redis-py pipeline that fails fails exactly its calls.
Each caller is one request: its awaited commands keep their order (the next one is queued only when
the previous one answered); calls of different callers have no order between them, exactly as with
concurrent calls on a connection pool.

With the api's breaker on the client (daemon/breaker.py), a call made while it is open fails at once
(``RedisUnavailableError``), unless it is the probe; the channel opens it when its calls got no reply for
``socket_timeout`` (counted from the last reply, so a call waits one timeout, not two) and closes it on
any reply; calls still queued when it opens fail then, not after another timeout on a new connection.

Bounded: at most ``max_pending`` calls are queued or waiting for replies; past that a caller waits for
room, up to ``timeout`` seconds, then gets a ``PipelineFullError`` (a redis-py ConnectionError, so
callers that handle Redis being unreachable handle this too).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daemon.breaker import RedisUnavailableError, guarded
from daemon.redis_channel import Channel, direct_settings, pack, resolve


class PipelineFullError(RedisConnectionError):
    """Too many Redis calls are queued in this process: Redis is not keeping up (or is unreachable)."""


class Pipeliner:
    def __init__(
        self,
        client: Any,
        *,
        max_batch: int = 128,
        early_batch: int | None = None,  # default: 8, or max_batch if smaller
        max_in_flight: int = 8,
        max_pending: int = 8192,
        timeout: float = 2.0,
    ) -> None:
        if early_batch is None:
            early_batch = min(8, max_batch)
        if max_batch < 1 or max_in_flight < 1 or max_pending < max_batch or not 1 <= early_batch <= max_batch:
            raise ValueError(
                "need max_batch >= 1, max_in_flight >= 1, max_pending >= max_batch"
                " and 1 <= early_batch <= max_batch"
            )
        self.client = client
        self.admin_client = client  # commands not routed by key (FUNCTION LOAD: lua/__init__.py)
        self.max_batch = max_batch
        self.early_batch = early_batch
        self.max_in_flight = max_in_flight
        self.max_pending = max_pending
        self.timeout = timeout
        self._queue: list[tuple[Any, asyncio.Future[Any]]] = []  # (args, or packed bytes; future)
        self._pending = 0  # queued + in flight
        self._in_flight = 0  # pipelines sent, replies not all read yet
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._room: deque[asyncio.Future[None]] = deque()
        # counters, for tests and metrics
        self.pipelines = 0
        self.commands = 0
        # A plain TCP client: one connection of the pipeliner's own (settings of the client's pool),
        # commands packed here, replies dispatched as they arrive. Anything else (Redis Cluster, TLS,
        # unix sockets, RESP3, credential providers): redis-py's own pipelines.
        self._direct = direct_settings(client)
        # The api's breaker (daemon/breaker.py), consulted here and told by the channel; redis-py's
        # pipelines (the other path) consult the client's own.
        self._breaker = guarded(client) if self._direct is not None else None
        self._encoding = self._direct.get("encoding", "utf-8") if self._direct else "utf-8"
        self._channel: Channel | None = None
        self._connecting: asyncio.Future[Channel] | None = None

    # -- the client-like interface ----------------------------------------------------------------

    def execute_command(self, *args: Any) -> Awaitable[Any]:
        """Queue one command; the awaitable resolves to its reply or raises its error."""
        breaker = self._breaker
        if breaker is not None and breaker.open:
            breaker.admit()  # raises RedisUnavailableError, unless this call is the probe
        if self._pending >= self.max_pending or self._room:
            return self._queue_when_room(args)
        return self._queue_now(args)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]:
        return self.execute_command("EVAL", script, numkeys, *keys_and_args)

    def fcall(self, function: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]:
        return self.execute_command("FCALL", function, numkeys, *keys_and_args)

    async def aclose(self) -> None:
        """Close the pipeliner's own connection (calls still waiting on it fail)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.fail(RedisConnectionError("The pipeliner was closed."))
            await asyncio.sleep(0)  # let the transport finish closing

    @property
    def pending(self) -> int:
        """Calls queued or in flight."""
        return self._pending

    # -- internals --------------------------------------------------------------------------------

    def _queue_now(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        # packed now: a command redis-py could not encode fails its own caller only, at once
        command = pack(args, self._encoding) if self._direct is not None else args
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((command, future))
        self._pending += 1
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    async def _queue_when_room(self, args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        room = loop.create_future()
        self._room.append(room)
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    await room
                    if self._pending < self.max_pending:
                        break
                    room = loop.create_future()
                    self._room.appendleft(room)
        except TimeoutError:
            raise PipelineFullError(
                f"{self._pending} Redis calls already queued in this process (max {self.max_pending})"
            ) from None
        finally:
            if not room.done():
                room.cancel()
                try:
                    self._room.remove(room)
                except ValueError:
                    pass
            self._wake()  # pass the turn on if there is still room
        return await self._queue_now(args)

    def _wake(self) -> None:
        free = self.max_pending - self._pending
        room = self._room
        while free > 0 and room:
            waiter = room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def _flush(self) -> None:
        self._scheduled = False
        channel = self._channel
        if channel is not None and not channel.closed and self._direct is not None:
            if channel.waiting and len(self._queue) < self.early_batch:
                return  # a write is in flight: the queue leaves when it answered or has grown
            queue, self._queue = self._queue, []
            for i in range(0, len(queue), self.max_batch):
                self._write(channel, queue[i : i + self.max_batch])
            return
        queue = self._queue
        loop = asyncio.get_running_loop()
        while queue and self._in_flight < self.max_in_flight:
            if len(queue) <= self.max_batch:
                batch, self._queue = queue, []
                queue = self._queue
            else:
                batch = queue[: self.max_batch]
                del queue[: self.max_batch]
            self._in_flight += 1
            task = loop.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        in_channel = False
        try:
            live = [item for item in batch if not item[1].done()]  # callers cancelled meanwhile
            if live:
                try:
                    if self._direct is not None:
                        breaker = self._breaker
                        if breaker is not None and breaker.open and not breaker.probing:
                            # queued before Redis stopped answering: fail now, not one timeout later
                            raise RedisUnavailableError("Redis did not answer within its timeout")
                        channel = await self._connected()
                        self._in_flight -= 1  # the channel counts its own replies from here
                        in_channel = True
                        self._answered(len(batch) - len(live))
                        self._write(channel, live)
                        return
                    self.pipelines += 1
                    self.commands += len(live)
                    await self._send_pipeline(live)
                except asyncio.CancelledError:
                    for _, future in live:
                        future.cancel()
                    raise
                except Exception as exc:  # the pipeline failed: its calls still unanswered fail
                    for _, future in live:
                        if not future.done():
                            future.set_exception(exc)
        finally:
            if not in_channel:
                self._in_flight -= 1
                self._pending -= len(batch)
                if self._room:
                    self._wake()
            if self._queue and not self._scheduled:
                self._flush()

    async def _send_pipeline(self, live: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for args, _ in live:
            pipe.execute_command(*args)
        replies = await pipe.execute(raise_on_error=False)
        for (_, future), reply in zip(live, replies, strict=True):
            resolve(future, reply)

    def _write(self, channel: Channel, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        live = [item for item in batch if not item[1].done()]  # callers cancelled meanwhile
        skipped = len(batch) - len(live)
        if skipped:
            self._answered(skipped)
        if live:
            self.pipelines += 1
            self.commands += len(live)
            channel.send(live)

    def _answered(self, n: int) -> None:
        """``n`` calls of the channel got their reply or their error."""
        self._pending -= n
        if self._room:
            self._wake()
        if self._queue and not self._scheduled:
            channel = self._channel
            if channel is not None and not channel.waiting:
                self._flush()

    async def _connected(self) -> Channel:
        """The pipeliner's connection; opened (once, however many batches wait for it) when needed."""
        channel = self._channel
        if channel is not None and not channel.closed:
            return channel
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            connecting = self._connecting
            try:
                channel = await self._connect()
            except BaseException as exc:
                self._connecting = None
                if self._breaker is not None:
                    if isinstance(exc, TimeoutError | RedisTimeoutError):
                        self._breaker.timed_out()
                    else:
                        self._breaker.failed()
                error = (
                    exc if isinstance(exc, RedisError) else RedisConnectionError(f"Error connecting: {exc}")
                )
                connecting.set_exception(error)
                connecting.exception()  # retrieved: the waiters (if any) raise it too
                raise error from exc
            self._channel = channel
            self._connecting = None
            connecting.set_result(channel)
            return channel
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Channel:
        settings = self._direct
        assert settings is not None
        loop = asyncio.get_running_loop()
        channel = Channel(self, settings)
        async with asyncio.timeout(settings.get("socket_connect_timeout") or settings.get("socket_timeout")):
            await loop.create_connection(
                lambda: channel, settings.get("host", "localhost"), settings.get("port", 6379)
            )
            handshake = []
            if settings.get("password") is not None:
                user = settings.get("username")
                auth = ("AUTH", user, settings["password"]) if user else ("AUTH", settings["password"])
                handshake.append(auth)
            if settings.get("db"):
                handshake.append(("SELECT", settings["db"]))
            if handshake:
                futures = [loop.create_future() for _ in handshake]
                self._pending += len(handshake)
                channel.send([(pack(c, self._encoding), f) for c, f in zip(handshake, futures, strict=True)])
                for f in futures:
                    await f
        return channel


def pipeliner_for(services: Any) -> Pipeliner:
    """The process's pipeliner on ``services.redis``, made on first use.

    Kept on the Services object itself (one per process) so that every handler shares it.
    """
    pipeliner: Pipeliner | None = services.__dict__.get("_pipeliner")
    if pipeliner is None or pipeliner.client is not services.redis:
        pipeliner = Pipeliner(services.redis, timeout=services.settings.redis_timeout_s)
        services.__dict__["_pipeliner"] = pipeliner
    return pipeliner
